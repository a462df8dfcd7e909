// Dispatch, packing and the persistent thread pool of the small-batch linear kernel.
#include "decode_kernels.h"
#include "parallel.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <string>
#include <mutex>
#include <thread>
#include <vector>

// The portable kernels (SSE2 on x86-64, NEON on arm64): 4 floats per vector, 4 rows.
#define JPEGLM_LANES 4
#define JPEGLM_MR 4
#define JPEGLM_ISA generic
#include "decode_kernels.inc"

namespace jpeglm {
namespace cpu {
namespace {

struct Kernels {
  const char* isa;
  detail::LinearKernel linear;
  detail::AttentionKernel attention;
};

// The best kernels this CPU runs; JPEGLM_CPU_KERNELS=avx2|generic asks for a lesser one
// (tests compare every kernel on one machine).
Kernels pick() {
  const char* env = std::getenv("JPEGLM_CPU_KERNELS");
  const std::string want = env ? env : "";
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (want != "avx2" && want != "generic" && __builtin_cpu_supports("avx512f"))
    return {"avx512", detail::linear_avx512, detail::attention_avx512};
  if (want != "generic" && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return {"avx2", detail::linear_avx2, detail::attention_avx2};
#endif
  return {"generic", detail::linear_generic, detail::attention_generic};
}

const Kernels g_kernels = pick();

inline void relax() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#endif
}

// Workers that stay awake (spinning) for a short while after each task, since the sampler
// calls the kernel dozens of times per step with microseconds between calls; then they sleep
// on a condition variable. One run at a time; the calling thread is worker 0.
class Pool {
 public:
  using Task = void (*)(void* ctx, int t, int nt);

  void run(int nt, Task task, void* ctx) {
    nt = std::min(nt, 0xffff);
    std::lock_guard<std::mutex> one(run_mu_);
    grow(nt - 1);
    task_ = task;
    ctx_ = ctx;
    pending_.store(nt - 1, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lk(mu_);  // a run is (counter << 16 | workers taking part)
      uint64_t next = ((gen_.load(std::memory_order_relaxed) >> 16) + 1) << 16;
      gen_.store(next | static_cast<uint64_t>(nt), std::memory_order_release);
    }
    cv_.notify_all();
    task(ctx, 0, nt);
    while (pending_.load(std::memory_order_acquire) > 0) relax();
  }

 private:
  void grow(int n) {
    while (static_cast<int>(workers_.size()) < n) {
      int id = static_cast<int>(workers_.size()) + 1;
      uint64_t now = gen_.load(std::memory_order_relaxed);  // runs before this one: not its
      workers_.emplace_back([this, id, now] { loop(id, now); });
      workers_.back().detach();  // the pool lives until the process ends
    }
  }

  void loop(int id, uint64_t seen) {
    for (;;) {
      auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
      int spins = 0;
      uint64_t g;
      while ((g = gen_.load(std::memory_order_acquire)) == seen) {
        relax();
        if (++spins % 256 == 0 && std::chrono::steady_clock::now() > until) {
          std::unique_lock<std::mutex> lk(mu_);
          cv_.wait(lk, [&] { return gen_.load(std::memory_order_acquire) != seen; });
        }
      }
      seen = g;  // this run's task_ / ctx_ stay valid until every worker in it has finished
      if (id < static_cast<int>(g & 0xffff)) {
        task_(ctx_, id, static_cast<int>(g & 0xffff));
        pending_.fetch_sub(1, std::memory_order_acq_rel);
      }
    }
  }

  std::mutex run_mu_, mu_;
  std::condition_variable cv_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> gen_{0};
  std::atomic<int> pending_{0};
  Task task_ = nullptr;
  void* ctx_ = nullptr;
};

std::atomic<Pool*> g_pool{nullptr};
std::mutex g_pool_mu;

void forget_pool_in_child() { g_pool.store(nullptr); }  // the child has none of the threads

Pool& pool() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p) return *p;
  std::lock_guard<std::mutex> lk(g_pool_mu);
  static bool hooked = (pthread_atfork(nullptr, nullptr, forget_pool_in_child), true);
  (void)hooked;
  p = g_pool.load();
  if (!p) {
    p = new Pool();  // never deleted: detached workers may still reference it at exit
    g_pool.store(p, std::memory_order_release);
  }
  return *p;
}

// Runs fn(begin, end) over [0, count) cut into nt contiguous ranges, one per pool worker
// (inline when nt is 1).
template <class Fn>
void run_split(int64_t count, int nt, const Fn& fn) {
  if (nt <= 1) {
    fn(int64_t{0}, count);
    return;
  }
  struct Ctx {
    int64_t count;
    const Fn* fn;
  } ctx{count, &fn};
  pool().run(
      nt,
      [](void* c, int t, int n) {
        const Ctx& x = *static_cast<const Ctx*>(c);
        const int64_t per = (x.count + n - 1) / n;
        const int64_t b = std::min<int64_t>(x.count, t * per);
        const int64_t e = std::min<int64_t>(x.count, b + per);
        if (b < e) (*x.fn)(b, e);
      },
      &ctx);
}

}  // namespace

const char* isa() { return g_kernels.isa; }

void pack(const float* w, int64_t n, int64_t k, float* out) {
  const int64_t np = panels(n);
  std::memset(out, 0, sizeof(float) * np * k * kPanel);
  for (int64_t r = 0; r < n; ++r) {
    float* panel = out + (r / kPanel) * k * kPanel + (r % kPanel);
    const float* row = w + r * k;
    for (int64_t c = 0; c < k; ++c) panel[c * kPanel] = row[c];
  }
}

void matmul(const float* x, int64_t m, int64_t k, const float* packed, int64_t n, float* y,
            int threads) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    std::fill(y, y + m * n, 0.0f);
    return;
  }
  const int64_t np = panels(n);
  if (threads <= 0) threads = default_threads();
  // at least ~64 KiB of weights per thread, or the wake-ups cost more than they save
  const int64_t min_panels = std::max<int64_t>(1, 512 / std::max<int64_t>(k, 1));
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, np / min_panels)));
  run_split(np, nt, [&](int64_t p0, int64_t p1) {
    g_kernels.linear(x, m, k, packed, n, y, p0, p1);
  });
}

void attention(const AttentionArgs& a, int threads) {
  const int64_t tasks = a.batch * a.kv_heads;  // (batch row, kv head) pairs
  if (tasks <= 0) return;
  if (threads <= 0) threads = default_threads();
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, tasks)));
  run_split(tasks, nt, [&](int64_t t0, int64_t t1) { g_kernels.attention(a, t0, t1); });
}

}  // namespace cpu
}  // namespace jpeglm
