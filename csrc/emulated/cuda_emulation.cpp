// The emulator's scheduler (see cuda_emulation.h): a block's threads are ucontext fibers that
// run until they finish or wait in an exchange (shuffle, __syncwarp) or __syncthreads; the
// scheduler resumes, in thread order, every fiber whose wait is over, and fails the launch when
// none can go on.
#include "cuda_emulation.h"

#include <ucontext.h>

#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace cocosnet_ops {
namespace emulated {
namespace {

constexpr std::size_t kStackBytes = 256 * 1024;
constexpr int kWarp = 32;

enum class Wait { kNone, kExchange, kBlock };

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  Coordinates where;
  bool done = false;
  Wait wait = Wait::kNone;
  unsigned int mask = 0;       // the lanes of the exchange it waits in
  std::uint64_t exchanges = 0;  // exchanges published so far; the latest is in slot[exchanges % 2]
  std::uint64_t barriers = 0;   // __syncthreads reached so far
  alignas(16) unsigned char slot[2][16];
};

struct Launch {
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  Fiber* running = nullptr;
  const std::function<void()>* body = nullptr;
  std::vector<unsigned char> shared;
  std::string error;
};

thread_local Launch* current = nullptr;
thread_local std::string last_error;
thread_local std::string reported_error;  // the error cudaGetLastError returned last

Fiber& running() {
  if (current == nullptr || current->running == nullptr)
    throw std::logic_error("cocosnet_ops emulated CUDA: a device function ran outside a kernel launch");
  return *current->running;
}

// Lane l of the fiber's warp (warps are runs of 32 threads in the block's linear order, as on a
// GPU), or nullptr past the block's last thread.
Fiber* lane_of(const Fiber& fiber, int lane) {
  const auto linear = static_cast<std::size_t>(&fiber - current->fibers.data());
  const std::size_t index = linear / kWarp * kWarp + static_cast<std::size_t>(lane);
  return index < current->fibers.size() ? &current->fibers[index] : nullptr;
}

bool exchange_complete(const Fiber& fiber) {
  for (int lane = 0; lane < kWarp; ++lane) {
    if (!(fiber.mask >> lane & 1u)) continue;
    const Fiber* other = lane_of(fiber, lane);
    // A lane that has published this round may have gone on, even finished; one that finished
    // without publishing it never will (a deadlock, reported by the scheduler).
    if (other == nullptr || other->exchanges < fiber.exchanges) return false;
  }
  return true;
}

bool barrier_complete(const Fiber& fiber) {
  for (const Fiber& other : current->fibers)
    if (!other.done && other.barriers < fiber.barriers) return false;
  return true;
}

bool ready(const Fiber& fiber) {
  switch (fiber.wait) {
    case Wait::kNone:
      return true;
    case Wait::kExchange:
      return exchange_complete(fiber);
    case Wait::kBlock:
      return barrier_complete(fiber);
  }
  return false;
}

void yield(Fiber& fiber, Wait wait) {
  fiber.wait = wait;
  swapcontext(&fiber.context, &current->scheduler);
  fiber.wait = Wait::kNone;
}

void fiber_main() {
  Fiber& fiber = *current->running;
  (*current->body)();
  fiber.done = true;
  swapcontext(&fiber.context, &current->scheduler);
}

std::string describe_deadlock(const Launch& launch) {
  for (const Fiber& fiber : launch.fibers) {
    if (fiber.done) continue;
    const char* where = fiber.wait == Wait::kBlock ? "__syncthreads" : "a shuffle or __syncwarp";
    return "emulated kernel launch deadlocked: thread " + std::to_string(fiber.where.thread.x) + " of block (" +
           std::to_string(fiber.where.block.x) + ", " + std::to_string(fiber.where.block.y) +
           ") waits in " + where + " that not every thread it names reaches";
  }
  return "emulated kernel launch deadlocked";
}

// Runs one block to completion; false (and launch.error) on a deadlock.
bool run_block(Launch& launch, const uint3& block, dim3 threads, dim3 grid) {
  for (std::size_t t = 0; t < launch.fibers.size(); ++t) {
    Fiber& fiber = launch.fibers[t];
    fiber.where = {{static_cast<unsigned int>(t % threads.x), static_cast<unsigned int>(t / threads.x % threads.y),
                    static_cast<unsigned int>(t / threads.x / threads.y)},
                   block, threads, grid};
    fiber.done = false;
    fiber.wait = Wait::kNone;
    fiber.exchanges = fiber.barriers = 0;
    getcontext(&fiber.context);
    fiber.context.uc_stack.ss_sp = fiber.stack.get();
    fiber.context.uc_stack.ss_size = kStackBytes;
    fiber.context.uc_link = nullptr;
    makecontext(&fiber.context, fiber_main, 0);
  }
  // Garbage, as on a GPU: a kernel that reads shared memory before writing it gets no zeros.
  std::fill(launch.shared.begin(), launch.shared.end(), static_cast<unsigned char>(0xA5));
  for (;;) {
    bool all_done = true, progressed = false;
    for (Fiber& fiber : launch.fibers) {
      if (fiber.done) continue;
      all_done = false;
      if (!ready(fiber)) continue;
      launch.running = &fiber;
      swapcontext(&launch.scheduler, &fiber.context);
      launch.running = nullptr;
      progressed = true;
    }
    if (all_done) return true;
    if (!progressed) {
      launch.error = describe_deadlock(launch);
      return false;
    }
  }
}

}  // namespace

const Coordinates& coordinates() { return running().where; }

void exchange(unsigned int mask, const void* value, std::size_t size, int source, void* out) {
  Fiber& fiber = running();
  fiber.exchanges += 1;
  std::memcpy(fiber.slot[fiber.exchanges % 2], value, size);
  fiber.mask = mask;
  yield(fiber, Wait::kExchange);
  const Fiber* from = lane_of(fiber, source);
  // The source has published this round (exchange_complete) and cannot have published the round
  // after the next, which needs this fiber to arrive first: its slot still holds this round.
  std::memcpy(out, from->slot[fiber.exchanges % 2], size);
}

void sync_threads() {
  Fiber& fiber = running();
  fiber.barriers += 1;
  yield(fiber, Wait::kBlock);
}

unsigned char* dynamic_shared() {
  running();
  return current->shared.data();
}

void run(const std::function<void()>& body, dim3 blocks, dim3 threads, std::size_t shared_bytes) {
  Launch launch;
  launch.body = &body;
  launch.fibers.resize(std::size_t{threads.x} * threads.y * threads.z);
  for (Fiber& fiber : launch.fibers) fiber.stack = std::make_unique<char[]>(kStackBytes);
  launch.shared.resize(shared_bytes);
  Launch* const outer = current;
  current = &launch;
  bool ok = true;
  for (unsigned int z = 0; z < blocks.z && ok; ++z)
    for (unsigned int y = 0; y < blocks.y && ok; ++y)
      for (unsigned int x = 0; x < blocks.x && ok; ++x) ok = run_block(launch, {x, y, z}, threads, blocks);
  current = outer;
  if (!ok) last_error = launch.error;
}

}  // namespace emulated
}  // namespace cocosnet_ops

// As CUDA's: the last launch error of this thread, reset by reading it.
cudaError_t cudaGetLastError() {
  using cocosnet_ops::emulated::last_error;
  if (last_error.empty()) return cudaSuccess;
  cocosnet_ops::emulated::reported_error.swap(last_error);
  last_error.clear();
  return cudaErrorLaunchFailure;
}

const char* cudaGetErrorString(cudaError_t error) {
  return error == cudaSuccess ? "no error" : cocosnet_ops::emulated::reported_error.c_str();
}
