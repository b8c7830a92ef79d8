// A small persistent thread pool: parallel_for(nthreads, fn) runs fn(0..nthreads-1), the caller
// taking index 0. Workers sleep on a condition variable between calls, so a call costs a wake-up,
// not a thread creation. Safe across fork(): the child starts with no workers and recreates them.
#pragma once

#include <functional>

namespace msaccum {
namespace cpu {

int default_thread_count();
int pool_worker_count();  // worker threads the pool has started so far (the caller is not one)
void parallel_for(int nthreads, const std::function<void(int)>& fn);

}  // namespace cpu
}  // namespace msaccum
