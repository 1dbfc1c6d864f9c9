// y = x @ W.T for a 4-bit weight with per-group scales and mins (GGUF Q4_0, Q4_1; group 32 or a multiple),
// by integer dot products (AVX512-VNNI): x is quantized to int8 per block of 32 inputs, as llama.cpp does.
// Built and loaded by tiled_int4.py through inductor's C++ toolchain; loading it registers the CPU kernel of
// the op archivist::int4_matmul.
//
// packed: uint8 (tiles, in / 8, 64): for tile t, chunk c, output lane j < 16 and b < 4, byte 4 * j + b holds
//         q[16t + j][8c + b] in its low nibble and q[16t + j][8c + 4 + b] in its high one (q in 0..15)
// scales, mins: float16 (tiles, groups, 16): W = scale * q + min per group
// x: float32 or bfloat16 (rows, in); y: x's dtype (rows, out_features), without the padding lanes
//
// Per block of 32 inputs: x = sx * xq (xq int8, sx = max|x| / 127), so a lane's sum over the block is
// scale * sx * sum(q * xq) + min * sx * sum(xq): 8 `vpdpbusd` (unsigned q times signed xq, four at a time)
// into 16 int32 lanes, then two float FMAs. A tile's bytes are streamed once for every row.

#include <torch/csrc/inductor/cpp_prefix.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define ARCHIVIST_VNNI 1
#endif

namespace {

#ifdef ARCHIVIST_VNNI

constexpr int64_t LANES = 16, BLOCK = 32;

// 32 inputs of a row as float32, in two registers.
inline void load_block(const void* x, int64_t bf16, int64_t first, __m512& low, __m512& high) {
    if (bf16) {
        const auto* p = static_cast<const uint16_t*>(x) + first;
        const __m512i words = _mm512_loadu_si512(p);  // 32 bfloat16: widened by a 16-bit shift
        const __m512i low_words = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(words));
        const __m512i high_words = _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(words, 1));
        low = _mm512_castsi512_ps(_mm512_slli_epi32(low_words, 16));
        high = _mm512_castsi512_ps(_mm512_slli_epi32(high_words, 16));
    } else {
        low = _mm512_loadu_ps(static_cast<const float*>(x) + first);
        high = _mm512_loadu_ps(static_cast<const float*>(x) + first + 16);
    }
}

// xq = round(x / sx) per block of 32 (to nearest, ties to even), sx = max|x| / 127 (0 for an all-zero
// block), and the block sums of xq.
void quantize_rows(const void* x, int64_t bf16, int64_t rows, int64_t in_features, int8_t* xq, float* sx,
                   int32_t* sums) {
    const int64_t blocks = in_features / BLOCK;
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t b = 0; b < blocks; ++b) {
            const int64_t first = r * in_features + b * BLOCK;
            __m512 low, high;
            load_block(x, bf16, first, low, high);
            const float top = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(low), _mm512_abs_ps(high)));
            const float scale = top / 127.0f, inverse = scale > 0.0f ? 1.0f / scale : 0.0f;
            const __m512i q_low = _mm512_cvtps_epi32(_mm512_mul_ps(low, _mm512_set1_ps(inverse)));
            const __m512i q_high = _mm512_cvtps_epi32(_mm512_mul_ps(high, _mm512_set1_ps(inverse)));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + first), _mm512_cvtepi32_epi8(q_low));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + first + 16), _mm512_cvtepi32_epi8(q_high));
            sx[r * blocks + b] = scale;
            sums[r * blocks + b] = _mm512_reduce_add_epi32(_mm512_add_epi32(q_low, q_high));
        }
}

// 16 float16 values as float32.
inline __m512 load_halves(const at::Half* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// One tile's 16 outputs for one row.
inline __m512 tile_row(const uint8_t* tile, const at::Half* scales, const at::Half* mins, const int8_t* xq,
                       const float* sx, const int32_t* sums, int64_t blocks, int64_t blocks_per_group) {
    const __m512i nibble = _mm512_set1_epi8(0x0F);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t b = 0; b < blocks; ++b) {
        const uint8_t* w = tile + b * 4 * 64;
        const auto* x4 = reinterpret_cast<const int32_t*>(xq + b * BLOCK);
        __m512i low_sum = _mm512_setzero_si512(), high_sum = _mm512_setzero_si512();
        for (int64_t c = 0; c < 4; ++c) {
            const __m512i v = _mm512_loadu_si512(w + c * 64);
            low_sum = _mm512_dpbusd_epi32(low_sum, _mm512_and_si512(v, nibble), _mm512_set1_epi32(x4[2 * c]));
            high_sum = _mm512_dpbusd_epi32(high_sum, _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble),
                                           _mm512_set1_epi32(x4[2 * c + 1]));
        }
        const int64_t g = b / blocks_per_group;
        const __m512 scale = load_halves(scales + g * LANES), min = load_halves(mins + g * LANES);
        const __m512 dot = _mm512_cvtepi32_ps(_mm512_add_epi32(low_sum, high_sum));
        acc = _mm512_fmadd_ps(dot, _mm512_mul_ps(scale, _mm512_set1_ps(sx[b])), acc);
        acc = _mm512_fmadd_ps(min, _mm512_set1_ps(sx[b] * static_cast<float>(sums[b])), acc);
    }
    return acc;
}

// y = x @ W.T: the work of the op archivist::int4_matmul (its schema is defined in tiled_int4.py).
void multiply(const uint8_t* packed, const at::Half* scales, const at::Half* mins, const void* x, void* y,
              int64_t rows, int64_t out_features, int64_t in_features, int64_t group_size, int64_t bf16) {
    const int64_t blocks = in_features / BLOCK, groups = in_features / group_size;
    const int64_t tiles = (out_features + LANES - 1) / LANES;
    std::vector<int8_t> xq(rows * in_features);
    std::vector<float> sx(rows * blocks);
    std::vector<int32_t> sums(rows * blocks);
    quantize_rows(x, bf16, rows, in_features, xq.data(), sx.data(), sums.data());
#pragma omp parallel for
    for (int64_t t = 0; t < tiles; ++t) {
        const uint8_t* tile = packed + t * in_features * 8;
        const int64_t lanes = std::min(LANES, out_features - t * LANES);
        for (int64_t r = 0; r < rows; ++r) {
            const __m512 acc = tile_row(tile, scales + t * groups * LANES, mins + t * groups * LANES,
                                        xq.data() + r * in_features, sx.data() + r * blocks,
                                        sums.data() + r * blocks, blocks, group_size / BLOCK);
            float lane_values[LANES];
            _mm512_storeu_ps(lane_values, acc);
            const int64_t at = r * out_features + t * LANES;
            for (int64_t l = 0; l < lanes; ++l) {
                if (bf16)
                    static_cast<at::BFloat16*>(y)[at + l] = at::BFloat16(lane_values[l]);
                else
                    static_cast<float*>(y)[at + l] = lane_values[l];
            }
        }
    }
}

at::Tensor int4_matmul(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                       const at::Tensor& mins, int64_t group_size, int64_t out_features) {
    if (x.scalar_type() != at::kFloat && x.scalar_type() != at::kBFloat16)
        return int4_matmul(x.to(at::kFloat), packed, scales, mins, group_size, out_features).to(x.scalar_type());
    TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) == packed.size(1) * 8, "input of shape ", x.sizes(),
                      " for a ", packed.size(1) * 8, "-wide weight");
    const at::Tensor input = x.contiguous();
    at::Tensor y = at::empty({x.size(0), out_features}, x.options());
    if (x.size(0) > 0)
        multiply(packed.data_ptr<uint8_t>(), scales.data_ptr<at::Half>(), mins.data_ptr<at::Half>(),
                 input.data_ptr(), y.data_ptr(), x.size(0), out_features, x.size(1), group_size,
                 x.scalar_type() == at::kBFloat16);
    return y;
}

#endif

}  // namespace

#ifdef ARCHIVIST_VNNI
// Loading this library registers the op's CPU kernel: called from a compiled graph it costs a dispatch, not
// a Python call (about 2 us against 9 us a call, a hundred calls a decode step).
TORCH_LIBRARY_IMPL(archivist, CPU, m) {
    m.impl("int4_matmul", int4_matmul);
}
#endif

// status[0] = 1 where this build has the VNNI loops (and registered the op's kernel), else 0.
extern "C" void kernel(float* status) {
#ifdef ARCHIVIST_VNNI
    status[0] = 1.0f;
#else
    status[0] = 0.0f;
#endif
}
