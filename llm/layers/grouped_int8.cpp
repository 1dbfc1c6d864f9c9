// y = x @ W.T for a group-32 int8 weight (GGUF Q8_0) laid out in tiles of 64 outputs; built and loaded by
// grouped_int8.py through inductor's C++ toolchain (its flags, its OpenMP, its on-disk cache).
//
// q: int8 (tiles, groups, 32, 64): tile t, group g, input k of the group, output lane l = W[64t + l][32g + k]
// s: float16 (tiles, groups, 64): the scale of group g of output 64t + l, as stored
// x: float32 (rows, groups * 32); y: float32 (rows, tiles * 64)
//
// Each tile's 40 KB (Gemma 3's 640 inputs) is read once for up to four rows and stays in the core's cache for
// the next four, so a few rows cost little more than one: the weight's bytes, not the arithmetic, bound it.
// Per group the products are summed in float32 and scaled once, like GGUF's own dequantize-then-dot.

#include <torch/csrc/inductor/cpp_prefix.h>
#if defined(CPU_CAPABILITY_AVX512) && !defined(ARCHIVIST_PORTABLE_KERNEL)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t TILE = 64, GROUP = 32;

#if defined(CPU_CAPABILITY_AVX512) && !defined(ARCHIVIST_PORTABLE_KERNEL)

// AVX-512: a tile's 64 outputs are four registers per row; a row block of ROWS keeps 8 * ROWS of them.
template <int ROWS>
void tile_rows(const int8_t* __restrict q, const at::Half* __restrict s, const float* __restrict x,
               float* __restrict y, int64_t groups, int64_t in_stride, int64_t out_stride) {
    __m512 acc[ROWS][4];
    for (int r = 0; r < ROWS; ++r)
        for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
        __m512 part[ROWS][4];
        for (int r = 0; r < ROWS; ++r)
            for (int j = 0; j < 4; ++j) part[r][j] = _mm512_setzero_ps();
        const int8_t* qg = q + g * GROUP * TILE;
        for (int64_t k = 0; k < GROUP; ++k) {
            __m512 w[4];
            for (int j = 0; j < 4; ++j) {
                const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qg + k * TILE + 16 * j));
                w[j] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
            }
            for (int r = 0; r < ROWS; ++r) {
                const __m512 xk = _mm512_set1_ps(x[r * in_stride + g * GROUP + k]);
                for (int j = 0; j < 4; ++j) part[r][j] = _mm512_fmadd_ps(w[j], xk, part[r][j]);
            }
        }
        for (int j = 0; j < 4; ++j) {
            const __m256i halves = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + g * TILE + 16 * j));
            const __m512 scale = _mm512_cvtph_ps(halves);
            for (int r = 0; r < ROWS; ++r) acc[r][j] = _mm512_fmadd_ps(part[r][j], scale, acc[r][j]);
        }
    }
    for (int r = 0; r < ROWS; ++r)
        for (int j = 0; j < 4; ++j) _mm512_storeu_ps(y + r * out_stride + 16 * j, acc[r][j]);
}

#else

// Any other CPU: plain loops over the 64 lanes, which the compiler vectorizes for the host (grouped_int8.py
// turns loop vectorization and FMA contraction back on for this file).
template <int ROWS>
void tile_rows(const int8_t* __restrict q, const at::Half* __restrict s, const float* __restrict x,
               float* __restrict y, int64_t groups, int64_t in_stride, int64_t out_stride) {
    float acc[ROWS][TILE] = {};
    for (int64_t g = 0; g < groups; ++g) {
        float part[ROWS][TILE] = {};
        const int8_t* qg = q + g * GROUP * TILE;
        for (int64_t k = 0; k < GROUP; ++k) {
            float w[TILE];
            for (int64_t l = 0; l < TILE; ++l) w[l] = static_cast<float>(qg[k * TILE + l]);
            for (int r = 0; r < ROWS; ++r) {
                const float xk = x[r * in_stride + g * GROUP + k];
                for (int64_t l = 0; l < TILE; ++l) part[r][l] += w[l] * xk;
            }
        }
        float scale[TILE];
        for (int64_t l = 0; l < TILE; ++l) scale[l] = static_cast<float>(s[g * TILE + l]);
        for (int r = 0; r < ROWS; ++r)
            for (int64_t l = 0; l < TILE; ++l) acc[r][l] += part[r][l] * scale[l];
    }
    for (int r = 0; r < ROWS; ++r)
        for (int64_t l = 0; l < TILE; ++l) y[r * out_stride + l] = acc[r][l];
}

#endif

}  // namespace

extern "C" void kernel(const int8_t* q, const at::Half* s, const float* x, float* y, int64_t rows,
                       int64_t tiles, int64_t groups) {
    const int64_t in_features = groups * GROUP, out_features = tiles * TILE;
#pragma omp parallel for
    for (int64_t tile = 0; tile < tiles; ++tile) {
        const int8_t* qt = q + tile * groups * GROUP * TILE;
        const at::Half* st = s + tile * groups * TILE;
        for (int64_t r = 0; r < rows;) {
            const float* xr = x + r * in_features;
            float* yr = y + r * out_features + tile * TILE;
            const int64_t left = rows - r;
            if (left >= 4) {
                tile_rows<4>(qt, st, xr, yr, groups, in_features, out_features);
                r += 4;
            } else if (left == 3) {
                tile_rows<3>(qt, st, xr, yr, groups, in_features, out_features);
                r += 3;
            } else if (left == 2) {
                tile_rows<2>(qt, st, xr, yr, groups, in_features, out_features);
                r += 2;
            } else {
                tile_rows<1>(qt, st, xr, yr, groups, in_features, out_features);
                r += 1;
            }
        }
    }
}
