// Wider vectors for the hot loops, chosen when the library is loaded.
//
// A plain x86-64 build may only assume SSE2 (4 floats per instruction). MINIMTL_SIMD_CLONES asks
// GCC/Clang to compile a function three times (AVX-512, AVX2, baseline) and to pick the best one
// the CPU supports through an ifunc resolver at load time, so one build is both portable and fast.
// The clones compute the same IEEE operations (no fused multiply-add: -ffp-contract=off), so they
// give the same results bit for bit.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__) && \
    !defined(MINIMTL_NO_SIMD_CLONES)
#define MINIMTL_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MINIMTL_SIMD_CLONES
#endif
