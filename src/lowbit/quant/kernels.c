/* Fused CPU kernels of lowbit's elementwise quantizers; lowbit/quant/native.py builds and
 * loads this file and documents when they are used.
 *
 * Each kernel does, in one pass over memory, the arithmetic of an eager PyTorch formula that
 * takes several passes (and, for the level lookup, a single-threaded gather), operation for
 * operation in float32, so the two give the same bits: compiled with -ffp-contract=off (no
 * fused multiply-adds) and rounding with rintf, round half to even like torch.round.
 * Work is split in contiguous ranges over OpenMP threads; PyTorch's own OpenMP runtime runs
 * them (its libgomp.so.1 is already loaded when this library is).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* gcc builds each kernel for AVX2 and for the baseline and picks one at load time (an ifunc;
 * native.py retries with -DLOWBIT_BASELINE_ONLY where the C library has no ifuncs). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(LOWBIT_BASELINE_ONLY)
#define VECTORIZED __attribute__((target_clones("avx2", "default")))
#else
#define VECTORIZED
#endif

/* Below this many elements a kernel runs on the calling thread: waking the pool costs more. */
#define PARALLEL_MIN 32768
/* Elements per block of the level lookup: positions first, then the gather, both vectorized. */
#define BLOCK 2048

enum { ROUND_CLAMP = 0, SYMMETRIC = 1, CLIP_ROUND = 2 };

/* This thread's share of [0, n): equal ranges, multiples of 16 elements (whole cache lines). */
static void thread_range(int64_t n, int64_t *begin, int64_t *end) {
#ifdef _OPENMP
    int64_t thread = omp_get_thread_num(), threads = omp_get_num_threads();
#else
    int64_t thread = 0, threads = 1;
#endif
    int64_t per = ((n + threads - 1) / threads + 15) / 16 * 16;
    *begin = thread * per < n ? thread * per : n;
    *end = *begin + per < n ? *begin + per : n;
}

/* out = table[int(clamp(x * scale - offset, 0, cells))]; NaN stays NaN. */
VECTORIZED static void grid_lookup_range(const float *restrict x, float *restrict out, int64_t n,
                                         const float *restrict table, float cells, float scale,
                                         float offset) {
    int32_t cell[BLOCK];
    for (int64_t start = 0; start < n; start += BLOCK) {
        int64_t count = n - start < BLOCK ? n - start : BLOCK;
        const float *xs = x + start;
        float *outs = out + start;
        int nan_seen = 0;
#pragma omp simd reduction(| : nan_seen)
        for (int64_t i = 0; i < count; ++i) {
            float position = xs[i] * scale - offset;
            position = position > 0.f ? position : 0.f;  /* NaN becomes cell 0 here */
            position = position < cells ? position : cells;
            cell[i] = (int32_t)position;
            nan_seen |= xs[i] != xs[i];
        }
        for (int64_t i = 0; i < count; ++i) outs[i] = table[cell[i]];
        if (nan_seen)
            for (int64_t i = 0; i < count; ++i)
                if (xs[i] != xs[i]) outs[i] = xs[i];
    }
}

void lowbit_grid_lookup(const float *x, float *out, int64_t n, const float *table, int64_t cells,
                        float scale, float offset, int threads) {
#pragma omp parallel num_threads(threads) if (n >= PARALLEL_MIN)
    {
        int64_t begin, end;
        thread_range(n, &begin, &end);
        grid_lookup_range(x + begin, out + begin, end - begin, table, (float)cells, scale, offset);
    }
}

/* out = levels[number of boundaries <= x] (torch.bucketize(x, boundaries, right=True) then a
 * gather); NaN stays NaN. `boundaries` holds 2^steps - 1 sorted values (padded with +inf), so
 * a branchless binary search of `steps` halvings needs no bounds check; the element loop is
 * the inner one, vectorized with gathers. */
VECTORIZED static void search_lookup_range(const float *restrict x, float *restrict out,
                                           int64_t n, const float *restrict boundaries,
                                           int32_t steps, const float *restrict levels) {
    int32_t index[BLOCK];
    for (int64_t start = 0; start < n; start += BLOCK) {
        int64_t count = n - start < BLOCK ? n - start : BLOCK;
        const float *xs = x + start;
        float *outs = out + start;
        for (int64_t i = 0; i < count; ++i) index[i] = 0;
        for (int32_t half = 1 << (steps - 1); half > 0; half >>= 1)
            for (int64_t i = 0; i < count; ++i)
                index[i] += boundaries[index[i] + half - 1] <= xs[i] ? half : 0;
        for (int64_t i = 0; i < count; ++i) outs[i] = levels[index[i]];
        for (int64_t i = 0; i < count; ++i)
            if (xs[i] != xs[i]) outs[i] = xs[i];
    }
}

void lowbit_search_lookup(const float *x, float *out, int64_t n, const float *boundaries,
                          int32_t steps, const float *levels, int threads) {
#pragma omp parallel num_threads(threads) if (n >= PARALLEL_MIN)
    {
        int64_t begin, end;
        thread_range(n, &begin, &end);
        search_lookup_range(x + begin, out + begin, end - begin, boundaries, steps, levels);
    }
}

/* ROUND_CLAMP: step * clamp(rint(x / step), q_min, q_max).
 * SYMMETRIC: step * copysign(min(floor(|x / step|), q_max - 1/2) + 1/2, x); `top` = q_max - 1/2.
 * CLIP_ROUND: rint(clamp(x, 0, top) * inverse) * step (PACT; `inverse` = 1 / step). */
VECTORIZED static void uniform_range(const float *restrict x, float *restrict out, int64_t n,
                                     int mode, float step, float inverse, float q_min,
                                     float top) {
    if (mode == ROUND_CLAMP) {
        for (int64_t i = 0; i < n; ++i) {
            float code = rintf(x[i] / step);
            code = code < q_min ? q_min : code;
            code = code > top ? top : code;
            out[i] = code * step;
        }
    } else if (mode == SYMMETRIC) {
        for (int64_t i = 0; i < n; ++i) {
            float code = floorf(fabsf(x[i] / step));
            code = code > top ? top : code;
            out[i] = copysignf(code + 0.5f, x[i]) * step;
        }
    } else {
        for (int64_t i = 0; i < n; ++i) {
            float clipped = x[i] < 0.f ? 0.f : x[i];
            clipped = clipped > top ? top : clipped;
            out[i] = rintf(clipped * inverse) * step;
        }
    }
}

void lowbit_uniform(const float *x, float *out, int64_t n, int mode, float step, float inverse,
                    float q_min, float top, int threads) {
#pragma omp parallel num_threads(threads) if (n >= PARALLEL_MIN)
    {
        int64_t begin, end;
        thread_range(n, &begin, &end);
        uniform_range(x + begin, out + begin, end - begin, mode, step, inverse, q_min, top);
    }
}

/* grad_x = grad outside [low, high] zeroed, as hardtanh's backward does (a NaN x keeps its
 * gradient); sums += (sum(grad * out), sum(grad_x * x), sum of grad where x > high, where
 * x < low). Partial sums are float over 1024 elements (vectorized), then double. */
VECTORIZED static void clip_backward_range(const float *restrict grad, const float *restrict x,
                                           const float *restrict out, float *restrict grad_x,
                                           int64_t n, float low, float high, double *sums) {
    double total_out = 0, total_x = 0, total_above = 0, total_below = 0;
    for (int64_t start = 0; start < n; start += 1024) {
        int64_t stop = n - start < 1024 ? n : start + 1024;
        float part_out = 0.f, part_x = 0.f, part_above = 0.f, part_below = 0.f;
#pragma omp simd reduction(+ : part_out, part_x, part_above, part_below)
        for (int64_t i = start; i < stop; ++i) {
            float xi = x[i];
            float passed = (xi < low) | (xi > high) ? 0.f : grad[i];
            grad_x[i] = passed;
            part_out += grad[i] * out[i];
            part_x += passed * xi;
            part_above += xi > high ? grad[i] : 0.f;
            part_below += xi < low ? grad[i] : 0.f;
        }
        total_out += part_out;
        total_x += part_x;
        total_above += part_above;
        total_below += part_below;
    }
    sums[0] += total_out;
    sums[1] += total_x;
    sums[2] += total_above;
    sums[3] += total_below;
}

/* sums = (sum(grad * out), sum(grad_x * x), sum(grad above high), sum(grad below low)). */
void lowbit_clip_backward(const float *grad, const float *x, const float *out, float *grad_x,
                          int64_t n, float low, float high, double *sums, int threads) {
    double t0 = 0, t1 = 0, t2 = 0, t3 = 0;
#pragma omp parallel num_threads(threads) if (n >= PARALLEL_MIN) reduction(+ : t0, t1, t2, t3)
    {
        int64_t begin, end;
        double part[4] = {0, 0, 0, 0};
        thread_range(n, &begin, &end);
        clip_backward_range(grad + begin, x + begin, out + begin, grad_x + begin, end - begin,
                            low, high, part);
        t0 += part[0];
        t1 += part[1];
        t2 += part[2];
        t3 += part[3];
    }
    sums[0] = t0;
    sums[1] = t1;
    sums[2] = t2;
    sums[3] = t3;
}

/* exp(v) to about 2 ulp in a form compilers vectorize (Cephes' expf: Cody-Waite reduction
 * by ln 2, degree-6 polynomial, exponent bits set directly); v is clamped to the range where
 * the result is a normal float. */
static inline float exp_poly(float v) {
    v = v < -87.3f ? -87.3f : v;
    v = v > 88.3f ? 88.3f : v;
    float n = rintf(v * 1.44269504088896341f);
    float r = v - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t bits; float value; } scale = {((int32_t)n + 127) << 23};
    return p * scale.value;
}

/* The logistic density S'(v) = S(v) (1 - S(v)) as e^-|v| / (1 + e^-|v|)^2, which keeps its
 * relative precision in both tails (S - S^2 cancels there). */
static inline float logistic_slope(float v) {
    float t = exp_poly(-fabsf(v));
    return t / ((1.0f + t) * (1.0f + t));
}

/* SRQ without masks, forward: k = clamp(floor(x / alpha + 1/2), lo, hi), out = alpha k,
 * k also stored as 8- or 16-bit integers (`wide`) for the backward. */
VECTORIZED static void srq_round_range(const float *restrict x, float *restrict out,
                                       void *restrict k, int wide, int64_t n, float alpha,
                                       float lo, float hi) {
    float grid[BLOCK];
    for (int64_t start = 0; start < n; start += BLOCK) {
        int64_t count = n - start < BLOCK ? n - start : BLOCK;
        for (int64_t i = 0; i < count; ++i) {
            float point = floorf(x[start + i] / alpha + 0.5f);
            point = point < lo ? lo : point;
            point = point > hi ? hi : point;
            out[start + i] = point * alpha;
            grid[i] = point == point ? point : 0.f;
        }
        if (wide)
            for (int64_t i = 0; i < count; ++i) ((int16_t *)k)[start + i] = (int16_t)grid[i];
        else
            for (int64_t i = 0; i < count; ++i) ((int8_t *)k)[start + i] = (int8_t)grid[i];
    }
}

void lowbit_srq_round(const float *x, float *out, void *k, int wide, int64_t n, float alpha,
                      float lo, float hi, int threads) {
#pragma omp parallel num_threads(threads) if (n >= PARALLEL_MIN)
    {
        int64_t begin, end;
        thread_range(n, &begin, &end);
        char *k_at = (char *)k + begin * (wide ? 2 : 1);
        srq_round_range(x + begin, out + begin, k_at, wide, end - begin, alpha, lo, hi);
    }
}

/* SRQ without masks, backward: the multi-class straight-through estimator taken through
 * r = pi_k / sum_j pi_j (Eq. 3, Algorithm 1 line 14; relaxed.py, _SemiRelaxed, has the
 * derivation and the reading of the end cells). With rho = alpha / sigma, c = grad k rho, the
 * cell's edges a = (k alpha - x) / sigma + rho / 2 (in double from alpha and sigma: the terms
 * cancel) and b = a - rho, the grid's outer edges U = a + (hi - k) rho and
 * L = b - (k - lo) rho, D = S(U) - S(L) = sum_j pi_j, P_v = S'(v) / D and
 * Delta = (S(b) - S(L)) - (S(U) - S(a)) (each difference taken in the tail where its
 * sigmoids are small, so that it vanishes exactly far outside the grid):
 *   grad_x = c r Delta,
 *   sums += (grad k,
 *            c (-k r Delta + (P_a + P_b - r (P_U + P_L)) / 2 - r B),
 *            c (a r Delta - rho (P_b - r P_L) + rho r B)),   B = (hi - k) P_U + (k - lo) P_L,
 * for the alpha gradient (first two) and the sigma gradient.
 * The chosen point is the nearest, so a < 0 only at k = hi (x above the grid) and b > 0 only
 * at k = lo (below it); everywhere else b <= 0 <= a. One exponential serves all four edges:
 * with t_v = e^-|v|, t_b = e^-rho t_a above, t_a = e^-rho t_b below, t_a t_b = e^-rho inside,
 * t_U = t_a e^-(hi - k) rho and t_L = t_b e^-(k - lo) rho (`decay`, e^-j rho by j). P_v and r
 * are taken relative to D without forming it: with E = max(-U, 0) + max(L, 0) (how far x is
 * outside the grid, in sigmas), S(v) S(-v) / (S(U) S(-L)) = e^(E - |v|) (1 + t_U) (1 + t_L) /
 * (1 + t_v)^2 with e^(E - |v|) <= 1 (t_v inside; above: 1 at a and U, e^-rho at b, e^-W at L;
 * below the mirror image), and r = (1 - e^-rho) (1 + t_U) (1 + t_L) / ((1 - e^-W) (1 + t_a)
 * (1 + t_b)), so nothing under- or overflows however far x is from the grid. Elements with
 * k = 0 get no gradient (c = 0) and are skipped (after a ReLU most inputs are 0). */
static inline float logistic(float v, float t, float inverse) { /* S(v), t = e^-|v|, 1/(1+t) */
    return v >= 0.f ? inverse : t * inverse;
}

/* S(p) - S(q), taken as S(-q) - S(-p) where both are near 1. */
static inline float logistic_difference(float p, float t_p, float i_p, float q, float t_q,
                                        float i_q) {
    return p + q > 0.f ? logistic(-q, t_q, i_q) - logistic(-p, t_p, i_p)
                       : logistic(p, t_p, i_p) - logistic(q, t_q, i_q);
}

VECTORIZED static void srq_backward_range(const float *restrict grad, const float *restrict x,
                                          const void *restrict k, int wide,
                                          float *restrict grad_x, int64_t n, double alpha,
                                          double inverse_sigma, float lo, float hi,
                                          float inverse_fill, float cell_fill, float tail,
                                          const float *restrict decay, double *sums) {
    const float ratio = (float)(alpha * inverse_sigma);
    float grid[BLOCK], xs[BLOCK], gs[BLOCK], edge[BLOCK], tail_a[BLOCK], tail_b[BLOCK];
    float result[BLOCK];
    int32_t index[BLOCK];
    const float half = ratio / 2, cell_decay = decay[1];
    for (int64_t start = 0; start < n; start += BLOCK) {
        int64_t count = n - start < BLOCK ? n - start : BLOCK;
        /* Only elements off the grid's zero get a gradient (dL/dy = G alpha k), gathered. */
        int64_t kept = 0;
        if (wide)
            for (int64_t i = 0; i < count; ++i) {
                int16_t point = ((const int16_t *)k)[start + i];
                grid[kept] = point, index[kept] = (int32_t)i, kept += point != 0;
            }
        else
            for (int64_t i = 0; i < count; ++i) {
                int8_t point = ((const int8_t *)k)[start + i];
                grid[kept] = point, index[kept] = (int32_t)i, kept += point != 0;
            }
        for (int64_t j = 0; j < kept; ++j) {
            xs[j] = x[start + index[j]];
            gs[j] = grad[start + index[j]];
        }
        /* The edges and the exponential first, in a short loop that pipelines. */
        for (int64_t i = 0; i < kept; ++i) {
            const float a = (float)(((double)grid[i] * alpha - xs[i]) * inverse_sigma) + half;
            const float b = a - ratio;
            const int above = (grid[i] == hi) & (a < 0.f), below = (grid[i] == lo) & (b > 0.f);
            /* Inside, the exponential of the edge nearer x (|v| <= rho / 2) gives the other's
             * without underflow. */
            const int use_b = below | (!above & (fabsf(b) < fabsf(a)));
            const float t = exp_poly(-fabsf(use_b ? b : a));
            const float other = (above | below) ? cell_decay * t : cell_decay / t;
            edge[i] = a;
            tail_a[i] = use_b ? other : t;
            tail_b[i] = use_b ? t : other;
        }
        float gk_sum = 0, alpha_sum = 0, sigma_sum = 0;
#pragma omp simd reduction(+ : gk_sum, alpha_sum, sigma_sum)
        for (int64_t i = 0; i < kept; ++i) {
            const float kr = grid[i] * ratio, g = gs[i], c = g * kr;
            const float a = edge[i], b = a - ratio, t_a = tail_a[i], t_b = tail_b[i];
            const float above_steps = hi - grid[i], below_steps = grid[i] - lo;
            const int above = (above_steps == 0.f) & (a < 0.f);
            const int below = (below_steps == 0.f) & (b > 0.f);
            const float t_up = t_a * decay[(int32_t)above_steps];
            const float t_low = t_b * decay[(int32_t)below_steps];
            const float a1 = 1.f + t_a, b1 = 1.f + t_b, u1 = 1.f + t_up, l1 = 1.f + t_low;
            const float inverse = 1.f / (a1 * b1 * u1 * l1); /* one division for four */
            const float i_a = inverse * b1 * u1 * l1, i_b = inverse * a1 * u1 * l1;
            const float i_up = inverse * a1 * b1 * l1, i_low = inverse * a1 * b1 * u1;
            /* e^(E - |v|) */
            const float e_a = above ? 1.f : (below ? cell_decay : t_a);
            const float e_b = below ? 1.f : (above ? cell_decay : t_b);
            const float e_up = above ? 1.f : (below ? tail : t_up);
            const float e_low = below ? 1.f : (above ? tail : t_low);
            const float scale = u1 * l1 * inverse_fill;
            const float p_a = scale * e_a * i_a * i_a, p_b = scale * e_b * i_b * i_b;
            const float p_up = inverse_fill * e_up * l1 * i_up;
            const float p_low = inverse_fill * e_low * u1 * i_low;
            const float r = scale * cell_fill * i_a * i_b;
            /* Inside, b, L <= 0 <= a, U: both differences from the small tails. Above,
             * U = a; below, L = b. */
            const float delta = (below ? 0.f : t_b * i_b - t_low * i_low)
                                - (above ? 0.f : t_a * i_a - t_up * i_up);
            const float rd = r * delta;
            const float rb = r * (above_steps * p_up + below_steps * p_low);
            result[i] = c * rd;
            gk_sum += g * grid[i];
            alpha_sum += c * ((p_a + p_b - r * (p_up + p_low)) * 0.5f - grid[i] * rd - rb);
            sigma_sum += c * (a * rd - ratio * (p_b - r * p_low - rb));
        }
        for (int64_t i = 0; i < count; ++i) grad_x[start + i] = 0.f;
        for (int64_t j = 0; j < kept; ++j) grad_x[start + index[j]] = result[j];
        sums[0] += gk_sum, sums[1] += alpha_sum, sums[2] += sigma_sum;
    }
}

void lowbit_srq_backward(const float *grad, const float *x, const void *k, int wide,
                         float *grad_x, int64_t n, double alpha, double sigma, float lo,
                         float hi, double *sums, int threads) {
    const double inverse_sigma = 1.0 / sigma;
    const float ratio = (float)(alpha * inverse_sigma);
    /* 1 / (1 - e^-W), 1 - e^-rho, e^-W and e^-j rho for j = 0 .. N - 1. */
    const double width = (double)ratio * ((double)hi - (double)lo + 1.0);
    const float inverse_fill = (float)(-1.0 / expm1(-width));
    const float cell_fill = (float)-expm1(-(double)ratio), tail = (float)exp(-width);
    float decay[256]; /* grids of at most 8 bits (relaxed.py) */
    const int32_t steps = (int32_t)(hi - lo) < 255 ? (int32_t)(hi - lo) : 255;
    for (int32_t j = 0; j <= steps; ++j) decay[j] = (float)exp(-(double)ratio * j);
    double s0 = 0, s1 = 0, s2 = 0;
#pragma omp parallel num_threads(threads) if (n >= PARALLEL_MIN) reduction(+ : s0, s1, s2)
    {
        int64_t begin, end;
        double part[3] = {0, 0, 0};
        thread_range(n, &begin, &end);
        const char *k_at = (const char *)k + begin * (wide ? 2 : 1);
        srq_backward_range(grad + begin, x + begin, k_at, wide, grad_x + begin, end - begin,
                           alpha, inverse_sigma, lo, hi, inverse_fill, cell_fill, tail, decay,
                           part);
        s0 += part[0], s1 += part[1], s2 += part[2];
    }
    sums[0] = s0, sums[1] = s1, sums[2] = s2;
}

/* log(v) for normal v > 0, to about 1 ulp, vectorizable (Cephes' logf). */
static inline float log_poly(float v) {
    union { float value; int32_t bits; } u = {v};
    float e = (float)(((u.bits >> 23) & 0xff) - 126);
    u.bits = (u.bits & 0x007fffff) | 0x3f000000; /* v = m 2^e, m in [1/2, 1) */
    float m = u.value;
    int below = m < 0.707106781186547524f;
    e = below ? e - 1.0f : e;
    m = below ? m + m - 1.0f : m - 1.0f;
    float z = m * m;
    float y = 7.0376836292e-2f;
    y = y * m - 1.1514610310e-1f;
    y = y * m + 1.1676998740e-1f;
    y = y * m - 1.2420140846e-1f;
    y = y * m + 1.4249322787e-1f;
    y = y * m - 1.6668057665e-1f;
    y = y * m + 2.0000714765e-1f;
    y = y * m - 2.4999993993e-1f;
    y = y * m + 3.3333331174e-1f;
    y = y * m * z;
    y = y + e * -2.12194440e-4f;
    y = y - 0.5f * z;
    return m + y + e * 0.693359375f;
}

/* SRQ with DropBits masks, backward: the straight-through estimator through
 * r = Z_k pi_k / sum_j Z_j pi_j (Eq. 3, Algorithm 1 lines 11-12), the formulas of relaxed.py
 * (_SemiRelaxed) over the runs of grid points sharing a gate. Run j has `first`, `last`, gate
 * Z_j (1 unmasked) and n_j points; its edges are L_j (the previous run's upper edge) and U_j.
 * With the chosen cell's edges a, b, t_v = e^-|v| and dist(l, u) = max(l, 0) + max(-u, 0) (how
 * far 0 lies from [l, u]), S(u) S(-l) = e^-dist(l, u) / ((1 + t_u) (1 + t_l)), so
 *   mass_j / (Z_k pi_k) = e^(dist(b, a) - dist(L_j, U_j) - log Z_k)
 *                         (1 + t_a) (1 + t_b) (1 - e^-W_j) / ((1 + t_U) (1 + t_L) (1 - e^-rho))
 * (one exponential per run, at most n_j / Z_j; capped at e^60 like relaxed.py's, which only
 * a dropped level, Z_j = 0, can reach) and w_j is Z_j times that. The slopes
 * p = S(-u) / (S(-l) (1 - e^-w)) and q = S(l) / (S(u) (1 - e^-w)) of an interval of width w
 * are e^(min(-u, 0) - min(-l, 0)) (1 + t_l) / ((1 + t_u) (1 - e^-w)) and its mirror image,
 * the exponential being e^-w, 1 or t_u (t_l). With `want_gates`, sums also get, per run, the
 * sum of c sigma r / Z_k over elements whose point lies in it (3 + j) and of c sigma r^2
 * mass_j / (Z_k pi_k) (3 + runs + j), the latter from `work` (runs x SRQ_BLOCK floats). */
#define SRQ_BLOCK 256
#define SRQ_LOG_RATIO_CAP 60.0f

typedef struct {
    double alpha, inverse_sigma;
    float ratio, sigma, lo, cell_fill, cell_decay;
    int32_t runs, want_gates;
    const float *first, *last, *gate, *fill, *tail;
    const float *point_log_gate, *point_inverse_gate;
    const int32_t *point_run, *group;
} SRQMasks;

static inline float distance_to_zero(float low, float up) {
    return (low > 0.f ? low : 0.f) + (up < 0.f ? -up : 0.f);
}

VECTORIZED static void srq_masked_range(const float *restrict grad, const float *restrict x,
                                        const void *restrict k, int wide,
                                        float *restrict grad_x, int64_t n,
                                        const SRQMasks *m, float *restrict work,
                                        double *sums) {
    const float ratio = m->ratio, half = ratio / 2, sigma = m->sigma;
    const float cap = SRQ_LOG_RATIO_CAP, ceiling = expf(SRQ_LOG_RATIO_CAP);
    const int32_t runs = m->runs;
    float grid[SRQ_BLOCK], a[SRQ_BLOCK], b[SRQ_BLOCK], t_a[SRQ_BLOCK], t_b[SRQ_BLOCK];
    float i_a[SRQ_BLOCK], i_b[SRQ_BLOCK], reference[SRQ_BLOCK], cell[SRQ_BLOCK];
    float edge[SRQ_BLOCK], t_edge[SRQ_BLOCK], i_edge[SRQ_BLOCK];
    float total[SRQ_BLOCK], delta[SRQ_BLOCK], up_sum[SRQ_BLOCK], low_sum[SRQ_BLOCK];
    float spread[SRQ_BLOCK], crs[SRQ_BLOCK], log_gate[SRQ_BLOCK], gs[SRQ_BLOCK];
    float result[SRQ_BLOCK];
    int32_t index[SRQ_BLOCK];
    double gk_total = 0, alpha_total = 0, sigma_total = 0;
    for (int64_t start = 0; start < n; start += SRQ_BLOCK) {
        const int64_t block = n - start < SRQ_BLOCK ? n - start : SRQ_BLOCK;
        /* Only elements off the grid's zero get a gradient (dL/dy = G alpha k). */
        int64_t count = 0;
        if (wide)
            for (int64_t i = 0; i < block; ++i) {
                int16_t point = ((const int16_t *)k)[start + i];
                grid[count] = point, index[count] = (int32_t)i, count += point != 0;
            }
        else
            for (int64_t i = 0; i < block; ++i) {
                int8_t point = ((const int8_t *)k)[start + i];
                grid[count] = point, index[count] = (int32_t)i, count += point != 0;
            }
        for (int64_t i = 0; i < count; ++i) {
            log_gate[i] = m->point_log_gate[(int32_t)(grid[i] - m->lo)];
            gs[i] = grad[start + index[i]];
        }
        for (int64_t i = 0; i < count; ++i) {
            const double xi = x[start + index[i]];
            const float ai = (float)(((double)grid[i] * m->alpha - xi) * m->inverse_sigma) + half;
            const float bi = ai - ratio;
            const float low = (float)(((double)m->lo * m->alpha - xi) * m->inverse_sigma) - half;
            const float ta = exp_poly(-fabsf(ai)), tb = exp_poly(-fabsf(bi));
            const float t_low = exp_poly(-fabsf(low));
            a[i] = ai, b[i] = bi, t_a[i] = ta, t_b[i] = tb;
            i_a[i] = 1.f / (1.f + ta), i_b[i] = 1.f / (1.f + tb);
            reference[i] = distance_to_zero(bi, ai) - log_gate[i];
            cell[i] = (1.f + ta) * (1.f + tb) / m->cell_fill;
            edge[i] = low, t_edge[i] = t_low, i_edge[i] = 1.f / (1.f + t_low);
            total[i] = delta[i] = up_sum[i] = low_sum[i] = spread[i] = 0.f;
        }
        for (int32_t j = 0; j < runs; ++j) {
            const float first = m->first[j], last = m->last[j], top = last * ratio;
            const float gate = m->gate[j], fill = m->fill[j], tail = m->tail[j];
            float *relative = work + (int64_t)j * SRQ_BLOCK;
            for (int64_t i = 0; i < count; ++i) {
                const float low = edge[i], t_low = t_edge[i], i_low = i_edge[i];
                const float up = a[i] + (top - grid[i] * ratio);
                const float t_up = exp_poly(-fabsf(up)), i_up = 1.f / (1.f + t_up);
                const float v = reference[i] - distance_to_zero(low, up);
                /* capped at e^cap as relaxed.py does (the factor after v is at least 1/4) */
                const float rel_full = exp_poly(v < cap + 2.f ? v : cap + 2.f) * cell[i] * i_up
                                       * i_low * fill;
                const float rel = rel_full < ceiling ? rel_full : ceiling;
                const float w = gate * rel;
                const float e_up = low >= 0.f ? tail : (up <= 0.f ? 1.f : t_up);
                const float e_low = up <= 0.f ? tail : (low >= 0.f ? 1.f : t_low);
                const float p = e_up * (1.f + t_low) * i_up / fill;
                const float q = e_low * (1.f + t_up) * i_low / fill;
                total[i] += w;
                delta[i] += w * (logistic_difference(b[i], t_b[i], i_b[i], low, t_low, i_low)
                                 - logistic_difference(up, t_up, i_up, a[i], t_a[i], i_a[i]));
                up_sum[i] += w * p;
                low_sum[i] += w * q;
                spread[i] += w * (p * (last - grid[i]) + q * (grid[i] - first));
                relative[i] = rel;
                edge[i] = up, t_edge[i] = t_up, i_edge[i] = i_up;
            }
        }
        float gk_sum = 0, alpha_sum = 0, sigma_sum = 0;
        for (int64_t i = 0; i < count; ++i) {
            const float r = 1.f / total[i], g = gs[i], kr = grid[i] * ratio;
            const float c = g * kr, cr = c * r, d = delta[i] * r;
            /* the cell's slopes */
            const float e_a = b[i] >= 0.f ? m->cell_decay : (a[i] <= 0.f ? 1.f : t_a[i]);
            const float e_b = a[i] <= 0.f ? m->cell_decay : (b[i] >= 0.f ? 1.f : t_b[i]);
            const float p = e_a * (1.f + t_b[i]) * i_a[i] / m->cell_fill;
            const float q = e_b * (1.f + t_a[i]) * i_b[i] / m->cell_fill;
            const float tilt = spread[i] * r;
            result[i] = cr * d;
            gk_sum += g * grid[i];
            alpha_sum += cr * ((p + q - (up_sum[i] + low_sum[i]) * r) * 0.5f - grid[i] * d - tilt);
            sigma_sum += cr * (a[i] * d - ratio * (q - low_sum[i] * r - tilt));
            crs[i] = cr * sigma;
        }
        for (int64_t i = 0; i < block; ++i) grad_x[start + i] = 0.f;
        for (int64_t i = 0; i < count; ++i) grad_x[start + index[i]] = result[i];
        gk_total += gk_sum, alpha_total += alpha_sum, sigma_total += sigma_sum;
        if (!m->want_gates) continue;
        for (int64_t i = 0; i < count; ++i) {
            const int32_t point = (int32_t)(grid[i] - m->lo);
            sums[3 + m->point_run[point]] += (double)(crs[i] * m->point_inverse_gate[point]);
            crs[i] /= total[i]; /* c sigma r^2 */
        }
        for (int32_t j = 0; j < runs; ++j) {
            if (m->group[j] < 0) continue; /* no gate: no gradient */
            const float *relative = work + (int64_t)j * SRQ_BLOCK;
            float part = 0.f;
            for (int64_t i = 0; i < count; ++i) part += crs[i] * relative[i];
            sums[3 + runs + j] += part;
        }
    }
    sums[0] += gk_total, sums[1] += alpha_total, sums[2] += sigma_total;
}

/* sums: 3 + 2 runs doubles (see srq_masked_range); -1 if no work memory. */
int lowbit_srq_masked_backward(const float *grad, const float *x, const void *k, int wide,
                               float *grad_x, int64_t n, double alpha, double sigma, float lo,
                               int32_t runs, const float *first, const float *last,
                               const float *gate, const int32_t *group,
                               const float *point_log_gate, const int32_t *point_run,
                               int want_gates, double *sums, int threads) {
    const float ratio = (float)(alpha / sigma);
    const int32_t points = (int32_t)(last[runs - 1] - lo) + 1;
    float *tables = malloc(sizeof(float) * (2 * (size_t)runs + (size_t)points));
    if (tables == 0) return -1;
    float *fill = tables, *tail = tables + runs, *point_inverse_gate = tables + 2 * runs;
    for (int32_t j = 0; j < runs; ++j) { /* 1 - e^-W_j and e^-W_j */
        double width = (double)ratio * ((double)last[j] - (double)first[j] + 1.0);
        fill[j] = (float)-expm1(-width);
        tail[j] = (float)exp(-width);
    }
    for (int32_t p = 0; p < points; ++p) {
        float z = gate[point_run[p]];
        point_inverse_gate[p] = z > 0.f ? 1.f / z : 0.f;
    }
    SRQMasks masks = {alpha, 1.0 / sigma, ratio, (float)sigma, lo, (float)-expm1(-(double)ratio),
                      (float)exp(-(double)ratio), runs, want_gates, first, last, gate, fill,
                      tail, point_log_gate, point_inverse_gate, point_run, group};
    const int32_t slots = 3 + 2 * runs;
    for (int32_t i = 0; i < slots; ++i) sums[i] = 0;
    int failed = 0;
#pragma omp parallel num_threads(threads) if (n >= PARALLEL_MIN) reduction(+ : failed)
    {
        int64_t begin, end;
        thread_range(n, &begin, &end);
        float *work = malloc(sizeof(float) * (size_t)runs * SRQ_BLOCK);
        double *part = calloc((size_t)slots, sizeof(double));
        if (work == 0 || part == 0) {
            failed += 1;
        } else {
            if (begin < end) {
                const char *k_at = (const char *)k + begin * (wide ? 2 : 1);
                srq_masked_range(grad + begin, x + begin, k_at, wide, grad_x + begin,
                                 end - begin, &masks, work, part);
            }
#pragma omp critical
            for (int32_t i = 0; i < slots; ++i) sums[i] += part[i];
        }
        free(work);
        free(part);
    }
    free(tables);
    return failed ? -1 : 0;
}

/* A uniform number in (0, 1) from a counter (murmur3's finalizer over seed and counter): the
 * same stream for any number of threads, and the backward pass regenerates it. */
static inline uint32_t mix32(uint32_t h) {
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

static inline float uniform_at(uint32_t seed_low, uint32_t seed_high, uint32_t element_low,
                               uint32_t element_high, uint32_t slot) {
    uint32_t bits = mix32(element_low ^ seed_low);
    bits = mix32(bits ^ (slot * 0x9e3779b9u + element_high) ^ seed_high);
    return ((float)(bits >> 9) + 0.5f) * (1.0f / 8388608.0f); /* noise.py: unit_interval */
}

/* uniform_at for elements first.. of `slots` slots each, in element-major order (tests). */
void lowbit_uniforms(float *out, int64_t elements, int32_t slots, uint64_t seed, int64_t first) {
    for (int64_t i = 0; i < elements; ++i)
        for (int32_t m = 0; m < slots; ++m)
            out[i * slots + m] = uniform_at((uint32_t)seed, (uint32_t)(seed >> 32),
                                            (uint32_t)(first + i), (uint32_t)((first + i) >> 32),
                                            (uint32_t)m);
}

/* RQ's training pass (rq.py, relaxed_quantize) on a block of elements. Window slot m
 * (grid point k = start + m, m < size) owns the cell between boundaries
 * b_m = (alpha (start + m - 1/2) - x) / sigma and b_(m+1); its logit is
 * (log S(b_(m+1)) + log S(-b_m) + g_m) / tau (the constant log(1 - e^(-alpha/sigma)) of
 * Eq. 1 cancels in the softmax), g_m = -log E_m, E_m = -log u, u = uniform_at(element, m).
 * Forward: out = alpha sum r_m k_m. Backward (grad given): with w_m = alpha r_m
 * (k_m - mean k) / tau and h_j = w_(j-1) S(-b_j) - w_j S(b_j), dout/dx = -sum h / sigma,
 * dout/dalpha = mean k + sum h_j (start + j - 1/2) / sigma, dout/dsigma = -sum h_j b_j /
 * sigma. Arrays `work` hold (size + 1) x RQ_BLOCK floats per table: [slot][element].
 *
 * The softmax is taken in linear form, with no logarithm of a probability: with the tails
 * t_j = e^-|b_j|, S(b) = e^min(b, 0) / (1 + t) and e^(g_m) = 1 / E_m, so at tau = 1
 * e^(logit_m - top) = f_m / ((1 + t_(m+1)) (1 + t_m) E_m), where f_m = e^(linear_m - top) is
 * 1 for the cell holding x and the tail of the nearer boundary for the others (relative to
 * the cell nearest x when x lies outside the window). The boundaries are alpha / sigma apart,
 * so the tails are a geometric sequence of ratio q = e^(-alpha/sigma) on each side of x: two
 * exponentials per element and one logarithm per slot (E_m), instead of three transcendental
 * functions per slot. Another tau raises these weights to 1 / tau in log form. */
#define RQ_BLOCK 256

typedef struct {
    float alpha, inverse_sigma, inverse_tau, lo, hi, decay; /* decay = e^(-alpha/sigma) */
    int32_t size;
    uint64_t seed;
} RQSettings;

VECTORIZED static void rq_range(const float *restrict x, const float *restrict grad,
                                float *restrict result, int64_t n, int64_t first,
                                const RQSettings *settings, float *restrict work,
                                double *sums) {
    const float alpha = settings->alpha, inverse_sigma = settings->inverse_sigma;
    const float inverse_tau = settings->inverse_tau, decay = settings->decay;
    const int32_t size = settings->size;
    const uint32_t seed_low = (uint32_t)settings->seed, seed_high = settings->seed >> 32;
    float *boundary = work, *tail = work + (size + 1) * RQ_BLOCK;
    float *weight = tail + (size + 1) * RQ_BLOCK;
    float start[RQ_BLOCK], total[RQ_BLOCK], mean_m[RQ_BLOCK], top[RQ_BLOCK];
    float above[RQ_BLOCK], below[RQ_BLOCK], scale_out[RQ_BLOCK];
    int32_t first_up[RQ_BLOCK];
    double sum_alpha = 0, sum_sigma = 0;
    for (int64_t begin = 0; begin < n; begin += RQ_BLOCK) {
        int64_t count = n - begin < RQ_BLOCK ? n - begin : RQ_BLOCK;
        const float *xs = x + begin;
        for (int64_t i = 0; i < count; ++i) {
            float s = floorf(xs[i] / alpha + 0.5f) - (float)(size / 2);
            s = s < settings->lo ? settings->lo : s;
            s = s > settings->hi - size + 1 ? settings->hi - size + 1 : s;
            start[i] = s;
            first_up[i] = 0;
            above[i] = INFINITY;
            below[i] = -INFINITY;
            total[i] = 0.f;
            mean_m[i] = 0.f;
            top[i] = -INFINITY;
        }
        /* Boundaries; f = the first one at or above x (size + 1 if none); b_f and b_(f-1). */
        for (int32_t j = 0; j <= size; ++j) {
            float *b = boundary + j * RQ_BLOCK;
            for (int64_t i = 0; i < count; ++i) {
                float v = (alpha * (start[i] + (float)j - 0.5f) - xs[i]) * inverse_sigma;
                b[i] = v;
                first_up[i] += v < 0.f;
                above[i] = v >= 0.f && v < above[i] ? v : above[i];
                below[i] = v < 0.f && v > below[i] ? v : below[i];
            }
        }
        /* The tails next to x, e^-b_f above and e^b_(f-1) below (the end boundary's tail
         * when x lies outside the window); beyond them the sweeps run relative to it. */
        for (int64_t i = 0; i < count; ++i) {
            int32_t f = first_up[i];
            above[i] = exp_poly(-above[i]);
            below[i] = exp_poly(below[i]);
            scale_out[i] = f == 0 ? above[i] : f == size + 1 ? below[i] : 1.0f;
            above[i] = f == 0 ? 1.0f : above[i];
            below[i] = f == size + 1 ? 1.0f : below[i];
        }
        /* Relative tails: geometric from f upwards and from f - 1 downwards. */
        for (int32_t j = 0; j <= size; ++j) {
            float *t = tail + j * RQ_BLOCK;
            for (int64_t i = 0; i < count; ++i) {
                float run = j == first_up[i] ? above[i] : above[i] * decay;
                above[i] = j >= first_up[i] ? run : above[i];
                t[i] = run;
            }
        }
        for (int32_t j = size; j >= 0; --j) {
            float *t = tail + j * RQ_BLOCK;
            for (int64_t i = 0; i < count; ++i) {
                float run = j == first_up[i] - 1 ? below[i] : below[i] * decay;
                below[i] = j < first_up[i] ? run : below[i];
                t[i] = j < first_up[i] ? run : t[i];
            }
        }
        /* Unnormalized softmax weights in `weight` (f_m from the relative tails), then the
         * tails themselves (relative ones times the scale outside the window). */
        const uint32_t element_high = (uint32_t)((first + begin) >> 32);
        const uint32_t element_low = (uint32_t)(first + begin);
        for (int32_t m = 0; m < size; ++m) {
            float *z = weight + m * RQ_BLOCK;
            const float *t_up = tail + (m + 1) * RQ_BLOCK, *t_lo = tail + m * RQ_BLOCK;
            for (int64_t i = 0; i < count; ++i) {
                uint32_t low = element_low + (uint32_t)i; /* the element's 64-bit index */
                uint32_t high = element_high + (low < element_low);
                float u = uniform_at(seed_low, seed_high, low, high, (uint32_t)m);
                int32_t f = first_up[i];
                float near = m >= f ? t_lo[i] : m == f - 1 ? 1.0f : t_up[i];
                float s_up = scale_out[i] * t_up[i], s_lo = scale_out[i] * t_lo[i];
                z[i] = near / ((1.0f + s_up) * (1.0f + s_lo) * -log_poly(u));
            }
        }
        for (int32_t j = 0; j <= size; ++j) {
            float *t = tail + j * RQ_BLOCK;
            for (int64_t i = 0; i < count; ++i) t[i] *= scale_out[i];
        }
        if (inverse_tau != 1.0f) {
            for (int32_t m = 0; m < size; ++m) {
                float *z = weight + m * RQ_BLOCK;
                for (int64_t i = 0; i < count; ++i) {
                    float w = z[i] > 1.17549435e-38f ? z[i] : 1.17549435e-38f;
                    float logit = log_poly(w) * inverse_tau;
                    z[i] = logit;
                    top[i] = logit > top[i] ? logit : top[i];
                }
            }
            for (int32_t m = 0; m < size; ++m) {
                float *z = weight + m * RQ_BLOCK;
                for (int64_t i = 0; i < count; ++i) z[i] = exp_poly(z[i] - top[i]);
            }
        }
        for (int32_t m = 0; m < size; ++m) {
            const float *z = weight + m * RQ_BLOCK;
            for (int64_t i = 0; i < count; ++i) {
                total[i] += z[i];
                mean_m[i] += z[i] * (float)m;
            }
        }
        for (int64_t i = 0; i < count; ++i) mean_m[i] /= total[i];
        if (grad == 0) {
            for (int64_t i = 0; i < count; ++i) result[begin + i] = alpha * (start[i] + mean_m[i]);
            continue;
        }
        /* Backward: r_m = weight / total, h_j from the neighbouring slots' weights. With
         * b_j = b_0 + j alpha / sigma, sum h_j b_j = b_0 H + (alpha / sigma) J and sum h_j
         * (start + j - 1/2) = (start - 1/2) H + J, where H = sum h_j and J = sum j h_j: small
         * integers and double sums, so wide grids lose no bits to cancellation. */
        double h_total[RQ_BLOCK], j_total[RQ_BLOCK];
        float scale[RQ_BLOCK];
        for (int64_t i = 0; i < count; ++i) {
            h_total[i] = j_total[i] = 0.0;
            scale[i] = alpha * inverse_tau / total[i];
        }
        for (int32_t j = 0; j <= size; ++j) {
            const float *b = boundary + j * RQ_BLOCK;
            const float *w_below = j > 0 ? weight + (j - 1) * RQ_BLOCK : 0;
            const float *w_above = j < size ? weight + j * RQ_BLOCK : 0;
            const float *t = tail + j * RQ_BLOCK;
            for (int64_t i = 0; i < count; ++i) {
                float v = b[i], e = t[i];
                float s_pos = 1.0f / (1.0f + e), s_neg = e * s_pos; /* S(|v|), S(-|v|) */
                float s = v >= 0.f ? s_pos : s_neg, s_minus = v >= 0.f ? s_neg : s_pos;
                double h = 0.0;
                if (w_below) h += (double)(w_below[i] * ((float)(j - 1) - mean_m[i]) * s_minus);
                if (w_above) h -= (double)(w_above[i] * ((float)j - mean_m[i]) * s);
                h *= scale[i];
                h_total[i] += h;
                j_total[i] += h * j;
            }
        }
        const double ratio = (double)alpha * inverse_sigma;
        for (int64_t i = 0; i < count; ++i) {
            double g = grad[begin + i], h = h_total[i], hj = j_total[i];
            result[begin + i] = (float)(-g * h * inverse_sigma);
            double mean_k = (double)start[i] + mean_m[i];
            sum_alpha += g * (mean_k + ((start[i] - 0.5) * h + hj) * inverse_sigma);
            sum_sigma -= g * ((double)boundary[i] * h + ratio * hj) * inverse_sigma;
        }
    }
    sums[0] += sum_alpha;
    sums[1] += sum_sigma;
}

/* RQ forward (grad = NULL: result = out) or backward (result = grad_x, sums = the alpha and
 * sigma gradients' sums) over n elements; -1 if the work memory could not be allocated. */
int lowbit_rq(const float *x, const float *grad, float *result, int64_t n, float alpha,
              float sigma, float tau, float lo, float hi, int32_t size, uint64_t seed,
              double *sums, int threads) {
    RQSettings settings = {alpha, 1.0f / sigma, 1.0f / tau, lo, hi,
                           exp_poly(-alpha / sigma), size, seed};
    double total_alpha = 0, total_sigma = 0;
    int failed = 0;
#pragma omp parallel num_threads(threads) if (n >= PARALLEL_MIN) reduction(+ : total_alpha, total_sigma, failed)
    {
        int64_t begin, end;
        thread_range(n, &begin, &end);
        float *work = malloc(sizeof(float) * 3 * (size_t)(size + 1) * RQ_BLOCK);
        double part[2] = {0, 0};
        if (work == 0)
            failed += 1;
        else if (begin < end)
            rq_range(x + begin, grad ? grad + begin : 0, result + begin, end - begin, begin,
                     &settings, work, part);
        free(work);
        total_alpha += part[0];
        total_sigma += part[1];
    }
    sums[0] = total_alpha;
    sums[1] = total_sigma;
    return failed ? -1 : 0;
}
