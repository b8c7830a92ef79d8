// Detects arguments that share memory where that would corrupt the result: a buffer that is
// written must not overlap any other buffer of the call (read-only buffers may overlap each
// other). Used by both frontends, python_bindings.cpp and aot_ops.h (mindspore_aot.cpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

namespace msaccum {

struct ByteRange {
  uintptr_t begin, end;  // [begin, end); empty ranges are ignored
  bool written;
  int id;  // the caller's label for this buffer
};

// Returns the ids of one clashing pair (later-starting first), or {-1, -1}. O(n log n).
inline std::pair<int, int> find_overlap(std::vector<ByteRange> ranges) {
  ranges.erase(std::remove_if(ranges.begin(), ranges.end(), [](const ByteRange& r) { return r.end <= r.begin; }),
               ranges.end());
  std::sort(ranges.begin(), ranges.end(), [](const ByteRange& x, const ByteRange& y) { return x.begin < y.begin; });
  // Sweep in start order, remembering the range reaching furthest so far (any, and written).
  const ByteRange* furthest_any = nullptr;
  const ByteRange* furthest_written = nullptr;
  for (const ByteRange& r : ranges) {
    const ByteRange* clash = nullptr;
    if (r.written && furthest_any && r.begin < furthest_any->end) clash = furthest_any;
    else if (!r.written && furthest_written && r.begin < furthest_written->end) clash = furthest_written;
    if (clash) return {r.id, clash->id};
    if (!furthest_any || r.end > furthest_any->end) furthest_any = &r;
    if (r.written && (!furthest_written || r.end > furthest_written->end)) furthest_written = &r;
  }
  return {-1, -1};
}

}  // namespace msaccum
