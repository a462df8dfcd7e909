// The decode kernels for AVX-512 (16 floats per register, 8 rows x 2 registers of accumulators).
#define JPEGLM_LANES 16
#define JPEGLM_MR 8
#define JPEGLM_ISA avx512
#include "decode_kernels.inc"
