#include "thread_pool.h"

#include <pthread.h>
#include <sched.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

namespace msaccum {
namespace cpu {
namespace {

// The floating-point control state of the calling thread (SSE MXCSR: rounding, flush-to-zero,
// denormals-are-zero). A worker adopts the caller's for each job: the pool can be created from a
// thread of MindSpore's runtime that runs with FTZ/DAZ set, and its workers would otherwise flush
// subnormal values for every later caller, so one half of a tensor would differ from the other.
#if defined(__x86_64__) || defined(__i386__)
unsigned fp_state() { return _mm_getcsr(); }
void set_fp_state(unsigned state) { _mm_setcsr(state); }
#else
unsigned fp_state() { return 0; }
void set_fp_state(unsigned) {}
#endif

class Pool {
 public:
  void run(int nthreads, const std::function<void(int)>& fn) {
    std::lock_guard<std::mutex> call_lock(call_mutex_);  // one parallel call at a time
    ensure_workers(nthreads - 1);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &fn;
      fp_state_ = fp_state();
      active_ = nthreads - 1;
      remaining_ = nthreads - 1;
      ++generation_;
    }
    wake_.notify_all();
    fn(0);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return remaining_ == 0; });
    job_ = nullptr;
  }

  // After fork() only the forking thread exists: forget the workers (they are gone) and the
  // locks (they may have been held by a thread that no longer exists).
  void reset_after_fork() {
    new (&mutex_) std::mutex();
    new (&call_mutex_) std::mutex();
    new (&wake_) std::condition_variable();
    new (&done_) std::condition_variable();
    for (auto& t : workers_) t.detach();  // the std::thread objects refer to dead threads
    workers_.clear();
    job_ = nullptr;
    active_ = remaining_ = 0;
  }

  int workers() {
    std::lock_guard<std::mutex> call_lock(call_mutex_);
    return static_cast<int>(workers_.size());
  }

  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

 private:
  void ensure_workers(int count) {  // called with call_mutex_ held, before generation_ moves
    while (static_cast<int>(workers_.size()) < count) {
      const int index = static_cast<int>(workers_.size()) + 1;
      // The worker must start from the generation before this call's, or it could miss it.
      const unsigned long long start_generation = generation_;
      workers_.emplace_back([this, index, start_generation] { loop(index, start_generation); });
    }
  }

  void loop(int index, unsigned long long seen) {
    // Named so that tools (and tests/build/test_one_kernel_lib.py) can count the pool's threads in a
    // process: /proc/<pid>/task/*/comm reads "msaccum-pool" (at most 15 characters).
    pthread_setname_np(pthread_self(), "msaccum-pool");
    for (;;) {
      const std::function<void(int)>* job = nullptr;
      unsigned state = 0;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        if (index > active_) continue;  // this call uses fewer threads
        job = job_;
        state = fp_state_;
      }
      set_fp_state(state);
      (*job)(index);
      std::lock_guard<std::mutex> lock(mutex_);
      if (--remaining_ == 0) done_.notify_one();
    }
  }

  std::mutex call_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::vector<std::thread> workers_;
  const std::function<void(int)>* job_ = nullptr;
  unsigned fp_state_ = 0;
  unsigned long long generation_ = 0;
  int active_ = 0;
  int remaining_ = 0;
  bool stop_ = false;
};

Pool& pool() {
  static Pool* instance = [] {
    auto* p = new Pool();  // never destroyed: workers may outlive static destruction order
    pthread_atfork(nullptr, nullptr, [] { pool().reset_after_fork(); });
    return p;
  }();
  return *instance;
}

}  // namespace

int default_thread_count() {
  if (const char* env = std::getenv("MSACCUM_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  const unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

int pool_worker_count() { return pool().workers(); }

void parallel_for(int nthreads, const std::function<void(int)>& fn) {
  if (nthreads <= 1) {
    fn(0);
    return;
  }
  pool().run(nthreads, fn);
}

}  // namespace cpu
}  // namespace msaccum
