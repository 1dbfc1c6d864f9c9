// y = x @ W.T for a 5- or 6-bit weight with per-group scales (GGUF Q5_0, Q5_1, Q5_K, Q6_K) laid out in tiles
// of 64 outputs; built and loaded by tiled_lowbit.py through inductor's C++ toolchain.
//
// For tile t, group g, input k of the group (w = W[64t + l][group * g + k] for output lane l):
// low:   uint8 (tiles, groups, group, 32): byte l's low nibble holds lane l's low 4 bits, its high nibble
//        lane l + 32's
// high:  uint8 (tiles, groups, group, planes, 8): plane p is a 64-bit mask of bit 4 + p of the 64 lanes
// scale: float16 or float32 (tiles, groups, 64); offset: the same or null (then -zero * scale)
// x: float32 or bfloat16 (rows, groups * group); y: x's dtype (rows, out_features), without the padding lanes
//
// W = scale * q + offset per group, so a group's products are sum(x * q) in float32, then scaled once, plus
// offset * sum(x). Each tile is read once for up to four rows: the weight's bytes (5 or 6 bits and the
// scales) bound it, not the arithmetic.

#include <torch/csrc/inductor/cpp_prefix.h>

#include <vector>
#if defined(CPU_CAPABILITY_AVX512) && !defined(ARCHIVIST_PORTABLE_KERNEL)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t TILE = 64, HALF = 32, MAX_ROWS = 4;  // y's rows computed per pass over a tile

struct Layout {
    const uint8_t* low;
    const uint8_t* high;
    const void* scale;
    const void* offset;
    int64_t groups, group, planes, half_scales;
    float zero;
};

// Entry `index` of a table of scales (or offsets), as float32.
inline float group_value(const void* table, int64_t half, int64_t index) {
    return half ? static_cast<float>(static_cast<const at::Half*>(table)[index])
                : static_cast<const float*>(table)[index];
}

// The unsigned values of the 64 lanes of input row `row` (a tile's group's input k: row = first + k).
inline void unpack(const Layout& w, int64_t row, int32_t q[TILE]) {
    const uint8_t* low = w.low + row * HALF;
    const uint8_t* high = w.high + row * w.planes * 8;
    for (int64_t l = 0; l < HALF; ++l) {
        q[l] = low[l] & 0x0F;
        q[l + HALF] = low[l] >> 4;
    }
    for (int64_t p = 0; p < w.planes; ++p)
        for (int64_t l = 0; l < TILE; ++l) q[l] |= ((high[8 * p + l / 8] >> (l % 8)) & 1) << (4 + p);
}

// y[at] = value in y's dtype (bfloat16 or float32).
inline void store(void* y, int64_t at, float value, int64_t bf16) {
    if (bf16)
        static_cast<at::BFloat16*>(y)[at] = at::BFloat16(value);
    else
        static_cast<float*>(y)[at] = value;
}

#if defined(CPU_CAPABILITY_AVX512) && !defined(ARCHIVIST_PORTABLE_KERNEL)

inline __m512 group_values(const void* table, int64_t half, int64_t index) {
    if (half)
        return _mm512_cvtph_ps(_mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(static_cast<const at::Half*>(table) + index)));
    return _mm512_loadu_ps(static_cast<const float*>(table) + index);
}

// AVX-512: a tile's 64 lanes are four registers per row; the 32 bytes of low nibbles are split into lanes
// 0-31 and 32-63, the high planes added in under their bit masks, then widened to float32.
template <int ROWS>
void tile_rows(const Layout& w, int64_t tile, const float* __restrict x, const float* __restrict xsum,
               float* __restrict y, int64_t in_stride) {
    const int64_t group = w.group, planes = w.planes;
    __m512 acc[ROWS][4];
    for (int r = 0; r < ROWS; ++r)
        for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_ps();
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    for (int64_t g = 0; g < w.groups; ++g) {
        const int64_t first = (tile * w.groups + g) * group;  // this group's first input row of the tile
        __m512 part[ROWS][4];
        for (int r = 0; r < ROWS; ++r)
            for (int j = 0; j < 4; ++j) part[r][j] = _mm512_setzero_ps();
        for (int64_t k = 0; k < group; ++k) {
            const auto* bytes = reinterpret_cast<const __m256i*>(w.low + (first + k) * HALF);
            const __m256i packed = _mm256_loadu_si256(bytes);
            __m256i lanes[2] = {_mm256_and_si256(packed, nibble),
                                _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble)};
            const uint8_t* high = w.high + (first + k) * planes * 8;
            for (int64_t p = 0; p < planes; ++p) {
                uint64_t mask;
                __builtin_memcpy(&mask, high + 8 * p, 8);
                const __m256i bit = _mm256_set1_epi8(static_cast<char>(16 << p));
                lanes[0] = _mm256_mask_add_epi8(lanes[0], static_cast<__mmask32>(mask), lanes[0], bit);
                lanes[1] = _mm256_mask_add_epi8(lanes[1], static_cast<__mmask32>(mask >> 32), lanes[1], bit);
            }
            __m512 q[4];
            for (int h = 0; h < 2; ++h) {
                q[2 * h] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(lanes[h])));
                const __m128i upper = _mm256_extracti128_si256(lanes[h], 1);
                q[2 * h + 1] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(upper));
            }
            for (int r = 0; r < ROWS; ++r) {
                const __m512 xk = _mm512_set1_ps(x[r * in_stride + g * group + k]);
                for (int j = 0; j < 4; ++j) part[r][j] = _mm512_fmadd_ps(q[j], xk, part[r][j]);
            }
        }
        const int64_t at = (tile * w.groups + g) * TILE;
        for (int j = 0; j < 4; ++j) {
            const __m512 scale = group_values(w.scale, w.half_scales, at + 16 * j);
            const __m512 offset = w.offset ? group_values(w.offset, w.half_scales, at + 16 * j)
                                           : _mm512_mul_ps(scale, _mm512_set1_ps(-w.zero));
            for (int r = 0; r < ROWS; ++r) {
                const __m512 sum = _mm512_set1_ps(xsum[r * w.groups + g]);
                acc[r][j] = _mm512_fmadd_ps(part[r][j], scale, _mm512_fmadd_ps(offset, sum, acc[r][j]));
            }
        }
    }
    for (int r = 0; r < ROWS; ++r)
        for (int j = 0; j < 4; ++j) _mm512_storeu_ps(y + r * TILE + 16 * j, acc[r][j]);
}

#else

// Any other CPU: plain loops over the 64 lanes, which the compiler vectorizes for the host (tiled_lowbit.py
// turns loop vectorization and FMA contraction back on for this file).
template <int ROWS>
void tile_rows(const Layout& w, int64_t tile, const float* __restrict x, const float* __restrict xsum,
               float* __restrict y, int64_t in_stride) {
    const int64_t group = w.group;
    float acc[ROWS][TILE] = {};
    for (int64_t g = 0; g < w.groups; ++g) {
        const int64_t first = (tile * w.groups + g) * group;
        float part[ROWS][TILE] = {};
        for (int64_t k = 0; k < group; ++k) {
            int32_t values[TILE];
            unpack(w, first + k, values);
            float q[TILE];
            for (int64_t l = 0; l < TILE; ++l) q[l] = static_cast<float>(values[l]);
            for (int r = 0; r < ROWS; ++r) {
                const float xk = x[r * in_stride + g * group + k];
                for (int64_t l = 0; l < TILE; ++l) part[r][l] += q[l] * xk;
            }
        }
        const int64_t at = (tile * w.groups + g) * TILE;
        for (int64_t l = 0; l < TILE; ++l) {
            const float scale = group_value(w.scale, w.half_scales, at + l);
            const float offset = w.offset ? group_value(w.offset, w.half_scales, at + l) : -w.zero * scale;
            for (int r = 0; r < ROWS; ++r) acc[r][l] += part[r][l] * scale + offset * xsum[r * w.groups + g];
        }
    }
    for (int r = 0; r < ROWS; ++r)
        for (int64_t l = 0; l < TILE; ++l) y[r * TILE + l] = acc[r][l];
}

#endif

// y's lanes of a tile in x's dtype, the padding lanes of the last tile left out.
void store_tile(const float* tile_out, void* y, int64_t bf16, int64_t rows, int64_t first, int64_t lanes,
                int64_t out_features) {
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t l = 0; l < lanes; ++l)
            store(y, r * out_features + first + l, tile_out[r * TILE + l], bf16);
}

// The weight itself, (out_features, in_features) in y's dtype, for a prefill chunk's dense GEMM: one pass,
// where expanding it with tensor ops takes several. A group's 64 lanes are unpacked together, then each
// lane's run of `group` values is written out.
void expand(const Layout& w, void* y, int64_t out_features, int64_t bf16) {
    const int64_t in_features = w.groups * w.group, tiles = (out_features + TILE - 1) / TILE;
#pragma omp parallel for
    for (int64_t tile = 0; tile < tiles; ++tile) {
        const int64_t lanes = out_features - tile * TILE < TILE ? out_features - tile * TILE : TILE;
        std::vector<float> values(TILE * w.group);  // lane-major: values[l * group + k]
        for (int64_t g = 0; g < w.groups; ++g) {
            const int64_t first = (tile * w.groups + g) * w.group, at = (tile * w.groups + g) * TILE;
            float scale[TILE], offset[TILE];
            for (int64_t l = 0; l < TILE; ++l) {
                scale[l] = group_value(w.scale, w.half_scales, at + l);
                offset[l] = w.offset ? group_value(w.offset, w.half_scales, at + l) : -w.zero * scale[l];
            }
            for (int64_t k = 0; k < w.group; ++k) {
                int32_t q[TILE];
                unpack(w, first + k, q);
                for (int64_t l = 0; l < TILE; ++l)  // scale * q is exact, so the sum rounds once either way
                    values[l * w.group + k] = scale[l] * static_cast<float>(q[l]) + offset[l];
            }
            for (int64_t l = 0; l < lanes; ++l) {
                const float* run = values.data() + l * w.group;
                const int64_t start = (tile * TILE + l) * in_features + g * w.group;
                for (int64_t k = 0; k < w.group; ++k) store(y, start + k, run[k], bf16);
            }
        }
    }
}

}  // namespace

// y = x @ W.T; or, with `expand`, y = W (x is not read).
extern "C" void kernel(const uint8_t* low, const uint8_t* high, const void* scale, const void* offset,
                       const void* x, void* y, int64_t rows, int64_t out_features, int64_t groups,
                       int64_t group, int64_t planes, int64_t half_scales, int64_t zero, int64_t bf16,
                       int64_t expand_weight) {
    const Layout w{low, high, scale, offset, groups, group, planes, half_scales, static_cast<float>(zero)};
    if (expand_weight) {
        expand(w, y, out_features, bf16);
        return;
    }
    const int64_t in_features = groups * group, tiles = (out_features + TILE - 1) / TILE;
    std::vector<float> xf(rows * in_features), sums(rows * groups, 0.0f);  // x in float32, its group sums
    const auto* x_bf16 = static_cast<const at::BFloat16*>(x);
    const auto* x_float = static_cast<const float*>(x);
    for (int64_t i = 0; i < rows * in_features; ++i)
        xf[i] = bf16 ? static_cast<float>(x_bf16[i]) : x_float[i];
    for (int64_t i = 0; i < rows * in_features; ++i) sums[i / group] += xf[i];
#pragma omp parallel for
    for (int64_t tile = 0; tile < tiles; ++tile) {
        const int64_t first = tile * TILE, lanes = out_features - first < TILE ? out_features - first : TILE;
        for (int64_t r = 0; r < rows; r += MAX_ROWS) {
            float tile_out[MAX_ROWS * TILE];
            const float* xr = xf.data() + r * in_features;
            const float* sr = sums.data() + r * groups;
            const int64_t block = rows - r < MAX_ROWS ? rows - r : MAX_ROWS;
            switch (block) {
                case 4: tile_rows<4>(w, tile, xr, sr, tile_out, in_features); break;
                case 3: tile_rows<3>(w, tile, xr, sr, tile_out, in_features); break;
                case 2: tile_rows<2>(w, tile, xr, sr, tile_out, in_features); break;
                default: tile_rows<1>(w, tile, xr, sr, tile_out, in_features); break;
            }
            void* y_rows = static_cast<char*>(y) + r * out_features * (bf16 ? 2 : 4);
            store_tile(tile_out, y_rows, bf16, block, first, lanes, out_features);
        }
    }
}
