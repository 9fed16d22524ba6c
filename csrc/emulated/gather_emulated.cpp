// gather.cu for the emulator: the same source, compiled by the host compiler.
#include "../cuda/gather.cu"
