// The sampler's two memory-bound fp32 ops on CPU, each streaming its operand once from
// memory with all cores: the small-batch linear layer and attention over the KV cache (torch's
// GEMV and CPU flash attention reach about a third of the memory bandwidth on the 2-core
// reference machine; see benchmarks/bench_generate.py).
//
// Linear: y = x @ W^T with W pre-packed into column panels.
// Packed layout: panels of kPanel = 32 output columns; panel p holds W[32p + j, c] at
// offset (p * k + c) * 32 + j (rows past n are zero). Each output element is one sequential
// chain of fused multiply-adds over c = 0..k-1, whatever the number of rows m, so a row's
// result does not depend on the batch it was computed in.
#pragma once

#include <cstdint>

namespace jpeglm {
namespace cpu {

constexpr int kPanel = 32;

// The instruction set the kernel runs with on this CPU: "avx512", "avx2" or "generic".
const char* isa();

inline int64_t panels(int64_t n) { return (n + kPanel - 1) / kPanel; }
inline int64_t packed_size(int64_t n, int64_t k) { return panels(n) * k * kPanel; }

// w: (n, k) row-major -> out: packed_size(n, k) floats.
void pack(const float* w, int64_t n, int64_t k, float* out);

// x: (m, k) row-major, packed: pack(W), y: (m, n) row-major. threads <= 0: all cores.
void matmul(const float* x, int64_t m, int64_t k, const float* packed, int64_t n, float* y,
            int threads);

// Attention of `queries` new tokens per row over a KV cache holding kv_len positions, the
// queries being the last `queries` of them (query i sees keys 0 .. kv_len - queries + i):
// softmax(scale * q k^T) v per head, grouped-query heads sharing kv head h / (heads/kv_heads).
struct AttentionArgs {
  const float* q;  // (batch, queries, heads, dim), dense
  const float* k;  // key cache: element (b, h, s, d) at b*kv_stride_b + h*kv_stride_h + s*kv_stride_s + d
  const float* v;  // value cache, same strides
  float* out;      // (batch, queries, heads, dim), dense
  int64_t batch, queries, heads, kv_heads, dim, kv_len;
  int64_t kv_stride_b, kv_stride_h, kv_stride_s;
  float scale;
};
void attention(const AttentionArgs& args, int threads);

namespace detail {
// One ISA's kernels: linear over panels [p0, p1); attention over tasks [t0, t1) of
// (batch row, kv head).
using LinearKernel = void (*)(const float* x, int64_t m, int64_t k, const float* packed,
                              int64_t n, float* y, int64_t p0, int64_t p1);
using AttentionKernel = void (*)(const AttentionArgs& args, int64_t t0, int64_t t1);
#define JPEGLM_DECLARE(isa)                                                                  \
  void linear_##isa(const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t, \
                    int64_t);                                                               \
  void attention_##isa(const AttentionArgs&, int64_t, int64_t);
JPEGLM_DECLARE(avx512)
JPEGLM_DECLARE(avx2)
JPEGLM_DECLARE(generic)
#undef JPEGLM_DECLARE
}  // namespace detail

}  // namespace cpu
}  // namespace jpeglm
