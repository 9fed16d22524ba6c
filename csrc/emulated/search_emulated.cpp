// search.cu for the emulator: the same source, compiled by the host compiler.
#include "../cuda/search.cu"
