// Decode attention on the CPU: one query token per sequence over the paged KV cache, read in place through
// the block table; built and loaded by decode_attention.py through inductor's C++ toolchain.
//
// q, out: (batch, heads, dim); k_cache, v_cache: (blocks, block_size, kv_heads, dim), contiguous, all four of
// one dtype (float32, bfloat16 or float16); tables: int32 (batch, width); lens: int32 (batch,), the keys of
// each sequence counting the current one. A sequence's keys are read in one pass over its cache rows (a row
// holds every kv head, so the pass streams through each block), then its values in another; the query heads
// that share a kv head read the same row. Scores and sums are float32, the softmax is exact (its maximum
// first), and a sequence with no visible key gets zeros, as in kernels/reference.py. Sequences run in
// parallel when there are several and enough work.

#include <torch/csrc/inductor/cpp_prefix.h>

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <stdexcept>
#include <string>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t PARALLEL_WORK = 1 << 17;  // multiply-adds below which threads cost more than they save

// `Vec::size()` cache values from `p`, as float32.
template <typename T>
inline Vec load_floats(const T* p);
template <>
inline Vec load_floats(const float* p) {
    return Vec::loadu(p);
}
template <>
inline Vec load_floats(const at::BFloat16* p) {
    Vec out;
    at::vec::load_fp32_from_bf16(p, out);
    return out;
}
template <>
inline Vec load_floats(const at::Half* p) {
    Vec out;
    at::vec::load_fp32_from_fp16(p, out);
    return out;
}

template <typename T>
inline float dot(const float* q, const T* k, int64_t dim) {
    Vec acc(0.0f);
    int64_t i = 0;
    for (; i + Vec::size() <= dim; i += Vec::size())
        acc = at::vec::fmadd(Vec::loadu(q + i), load_floats(k + i), acc);
    float sum = at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, acc);
    for (; i < dim; ++i) sum += q[i] * static_cast<float>(k[i]);
    return sum;
}

template <typename T>
inline void add_scaled(float* acc, float weight, const T* v, int64_t dim) {
    const Vec w(weight);
    int64_t i = 0;
    for (; i + Vec::size() <= dim; i += Vec::size())
        at::vec::fmadd(w, load_floats(v + i), Vec::loadu(acc + i)).store(acc + i);
    for (; i < dim; ++i) acc[i] += weight * static_cast<float>(v[i]);
}

struct Shape {
    int64_t batch, heads, kv_heads, dim, blocks, block_size, width;
    float scale, softcap;  // softcap 0: none
    int64_t window;  // 0: none
};

// Calls visit(p, row) for the positions first + p (p < count) of a sequence, `row` being the position's row
// of the cache (all kv heads): a block at a time, without a division per key, the next block prefetched.
template <typename T, typename Visit>
inline void for_each_row(const Shape& s, const T* cache, const int32_t* table, int64_t first, int64_t count,
                         Visit visit) {
    const int64_t row_size = s.kv_heads * s.dim;
    for (int64_t p = 0; p < count;) {
        const int64_t position = first + p, index = position / s.block_size;
        const int64_t in_block = position % s.block_size;
        const int64_t run = std::min(s.block_size - in_block, count - p);
        const T* rows = cache + (table[index] * s.block_size + in_block) * row_size;
        if (p + run < count) __builtin_prefetch(cache + table[index + 1] * s.block_size * row_size);
        for (int64_t i = 0; i < run; ++i) visit(p + i, rows + i * row_size);
        p += run;
    }
}

// In place: run[p] = exp(run[p] - max(run)); returns their sum.
inline float exponentiate(float* run, int64_t count) {
    float top = run[0];
    for (int64_t p = 1; p < count; ++p) top = run[p] > top ? run[p] : top;
    const Vec shift(top);
    Vec sums(0.0f);
    int64_t p = 0;
    for (; p + Vec::size() <= count; p += Vec::size()) {
        const Vec e = (Vec::loadu(run + p) - shift).exp_u20();
        e.store(run + p);
        sums = sums + e;
    }
    float total = at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, sums);
    for (; p < count; ++p) {
        run[p] = std::exp(run[p] - top);
        total += run[p];
    }
    return total;
}

// One sequence, every head: its keys, then its values, each read in one pass over the cache rows (a row holds
// all kv heads, so the pass streams through each block). Query head j attends with kv head j / group.
template <typename T>
void attend_sequence(const Shape& s, const T* q, const T* k_cache, const T* v_cache, const int32_t* table,
                     int64_t length, T* out) {
    const int64_t group = s.heads / s.kv_heads, dim = s.dim, heads = s.heads;
    const int64_t first = s.window > 0 && length > s.window ? length - s.window : 0, count = length - first;
    if (count <= 0) {
        for (int64_t i = 0; i < heads * dim; ++i) out[i] = static_cast<T>(0.0f);
        return;
    }
    std::vector<float> query(heads * dim), scores(heads * count), acc(heads * dim, 0.0f);
    for (int64_t i = 0; i < heads * dim; ++i) query[i] = static_cast<float>(q[i]);
    for_each_row(s, k_cache, table, first, count, [&](int64_t p, const T* row) {
        for (int64_t j = 0; j < heads; ++j)
            scores[j * count + p] = dot(query.data() + j * dim, row + j / group * dim, dim);
    });
    for (int64_t j = 0; j < heads; ++j) {
        float* run = scores.data() + j * count;
        for (int64_t p = 0; p < count; ++p) {
            run[p] *= s.scale;
            if (s.softcap > 0.0f) run[p] = s.softcap * std::tanh(run[p] / s.softcap);
        }
        const float total = exponentiate(run, count);
        for (int64_t p = 0; p < count; ++p) run[p] /= total;
    }
    for_each_row(s, v_cache, table, first, count, [&](int64_t p, const T* row) {
        for (int64_t j = 0; j < heads; ++j)
            add_scaled(acc.data() + j * dim, scores[j * count + p], row + j / group * dim, dim);
    });
    for (int64_t i = 0; i < heads * dim; ++i) out[i] = static_cast<T>(acc[i]);
}

// Every block a sequence reads must be in the cache: checked before any thread starts (an exception cannot
// leave an OpenMP loop), so a bad table is a Python error, not a read past the cache.
void check_tables(const Shape& s, const int32_t* tables, const int32_t* lens) {
    for (int64_t b = 0; b < s.batch; ++b) {
        if (lens[b] < 0 || lens[b] > s.width * s.block_size)
            throw std::out_of_range("sequence " + std::to_string(b) + " has " + std::to_string(lens[b]) +
                                    " keys, its block table holds " + std::to_string(s.width * s.block_size));
        for (int64_t i = 0; i < (lens[b] + s.block_size - 1) / s.block_size; ++i)
            if (tables[b * s.width + i] < 0 || tables[b * s.width + i] >= s.blocks)
                throw std::out_of_range("sequence " + std::to_string(b) + " reads block " +
                                        std::to_string(tables[b * s.width + i]) + " of a cache of " +
                                        std::to_string(s.blocks));
    }
}

template <typename T>
void attend(const Shape& s, const void* q, const void* k_cache, const void* v_cache, const int32_t* tables,
            const int32_t* lens, void* out) {
    int64_t work = 0;
    for (int64_t b = 0; b < s.batch; ++b) work += lens[b];
    work *= s.heads * s.dim * 2;
#pragma omp parallel for if (s.batch > 1 && work >= PARALLEL_WORK)
    for (int64_t b = 0; b < s.batch; ++b) {
        const int64_t at = b * s.heads * s.dim;
        attend_sequence(s, static_cast<const T*>(q) + at, static_cast<const T*>(k_cache),
                        static_cast<const T*>(v_cache), tables + b * s.width, lens[b],
                        static_cast<T*>(out) + at);
    }
}

}  // namespace

// dtype: 0 float32, 1 bfloat16, 2 float16 (of q, the caches and out alike).
extern "C" void kernel(const void* q, const void* k_cache, const void* v_cache, const int32_t* tables,
                       const int32_t* lens, void* out, int64_t batch, int64_t heads, int64_t kv_heads,
                       int64_t dim, int64_t blocks, int64_t block_size, int64_t width, float scale,
                       int64_t window, float softcap, int64_t dtype) {
    const Shape s{batch, heads, kv_heads, dim, blocks, block_size, width, scale, softcap, window};
    check_tables(s, tables, lens);
    if (dtype == 1)
        attend<at::BFloat16>(s, q, k_cache, v_cache, tables, lens, out);
    else if (dtype == 2)
        attend<at::Half>(s, q, k_cache, v_cache, tables, lens, out);
    else
        attend<float>(s, q, k_cache, v_cache, tables, lens, out);
}
