// Shared helpers for the libFuzzer harnesses (see fuzz/README.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

// A violated invariant: print and abort, so libFuzzer records the input as a crash.
#define FUZZ_CHECK(cond)                                                          \
  do {                                                                            \
    if (!(cond)) {                                                                \
      std::fprintf(stderr, "FUZZ_CHECK failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                               \
    }                                                                             \
  } while (0)

// The first byte of a JPEG-target input picks the quality (1..100); the rest is the stream.
// Seeds are written by fuzz/make_corpus.py in this layout.
inline int take_quality(const uint8_t*& data, std::size_t& size) {
  if (size == 0) return 25;
  int q = 1 + data[0] % 100;
  ++data;
  --size;
  return q;
}
