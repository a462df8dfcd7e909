// The decode kernels for AVX2 + FMA (8 floats per register, 6 rows x 2 registers).
#define JPEGLM_LANES 8
#define JPEGLM_MR 6
#define JPEGLM_ISA avx2
#include "decode_kernels.inc"
