// The cells' pointwise math as CUDA kernels: one launch per step and direction; and, at
// the end of the file, each cell's whole time loop as one persistent kernel each way.
//
// The same contract as kernels/pointwise.py (the NumPy reference, the oracle these are
// tested against): the time loop does the GEMMs (cuBLAS, through CuPy), each kernel here
// does all the elementwise work of one step that the reference spreads over 10-20 array
// passes. One thread owns one (row b, hidden unit j) pair: it reads every gate of that
// unit and writes every result of it, so a kernel may write its gradient over the gates
// it reads (lstm_backward's dA over the gates) without a race.
//
// REAL is float or double: rnnkit.kernels.cuda compiles this file once per dtype with
// -DREAL=... (NVRTC through cupy.RawModule). Nothing is #included, so NVRTC needs no
// headers; tests/test_cuda_kernels.py compiles the same text with nvcc (syntax and
// types, when nvcc is on the PATH) and with the host C++ compiler through a small shim
// (tests/cuda_emulator.py) that runs the grid on the CPU (the math and the indexing,
// against the reference; the persistent kernels' blocks as concurrent threads).
//
// Layouts (all C-contiguous, row stride given by the gate count G):
//   LSTM  A, gates, dA (B, 4H) in PyTorch's order [i, f, g, o];  c, tanh_c, h (B, H)
//   GRU   xw, hw, gates, dxw, dhw (B, 3H) in order [r, z, n];    h, hw_n, dh (B, H)
//   RNN   a, h, dh, da (B, H)
// Every kernel takes n = B * H and H, and walks i = b * H + j over a grid-stride loop.
//
// Two callers: the wrappers with the reference's contract (kernels/cuda.py: lstm_forward
// and the rest), and the GPU time loop (cuda.forward_loop / backward_loop), which folds
// into the kernels the small passes around them (adding dy to dh, the GRU's b_hh, its
// hw_n copies and its direct path), so that a step and direction is one GEMM and one
// launch. Arguments a flag switches off are never read or written.

#ifndef REAL
#define REAL float
#endif

typedef long long rk_index;

__device__ __forceinline__ float rk_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double rk_tanh(double x) { return tanh(x); }

// sigma(x) = (1 + tanh(x / 2)) / 2: one transcendental, no overflow, and the reference's formula
__device__ __forceinline__ REAL rk_sigmoid(REAL x) {
    return (rk_tanh(x * (REAL)0.5) + (REAL)1) * (REAL)0.5;
}

#define RK_GRID_LOOP(i, n)                                                               \
    for (rk_index i = (rk_index)blockIdx.x * blockDim.x + threadIdx.x; i < (n);          \
         i += (rk_index)blockDim.x * gridDim.x)

// ------------------------------------------------------------------------------- LSTM
// A (B, 4H): pre-activations in, activated gates out (kept for the backward);
// c = f * c_prev + i * g;  tanh_c = tanh(c);  h = o * tanh_c.
extern "C" __global__ void rk_lstm_forward(REAL* A, const REAL* c_prev, REAL* c, REAL* tanh_c, REAL* h,
                                           rk_index n, rk_index H) {
    RK_GRID_LOOP(k, n) {
        const rk_index b = k / H, j = k - b * H;
        REAL* a = A + b * 4 * H + j;
        const REAL gi = rk_sigmoid(a[0]);
        const REAL gf = rk_sigmoid(a[H]);
        const REAL gg = rk_tanh(a[2 * H]);
        const REAL go = rk_sigmoid(a[3 * H]);
        a[0] = gi;
        a[H] = gf;
        a[2 * H] = gg;
        a[3 * H] = go;
        const REAL cn = gf * c_prev[k] + gi * gg;
        const REAL tc = rk_tanh(cn);
        c[k] = cn;
        tanh_c[k] = tc;
        h[k] = go * tc;
    }
}

// gates (B, 4H) activated; the gradient reaching h_t is g = dh (+ dy, has_dy = 1), and
// dc that reaching c_t (has_dc = 0: none; a pointer whose flag is 0 is never read).
// dc_total = dc + g * o * (1 - tanh_c^2);
// dA = [dc_total g i(1-i), dc_total c_prev f(1-f), dc_total i (1-g^2), g tanh_c o(1-o)];
// dc_prev = dc_total * f. dA may be gates itself, dc_prev may be dc.
extern "C" __global__ void rk_lstm_backward(const REAL* gates, const REAL* c_prev, const REAL* tanh_c,
                                            const REAL* dh, const REAL* dy, int has_dy, const REAL* dc,
                                            int has_dc, REAL* dA, REAL* dc_prev, rk_index n, rk_index H) {
    RK_GRID_LOOP(k, n) {
        const rk_index b = k / H, j = k - b * H;
        const rk_index row = b * 4 * H + j;
        const REAL gi = gates[row], gf = gates[row + H], gg = gates[row + 2 * H], go = gates[row + 3 * H];
        const REAL tc = tanh_c[k];
        const REAL g_h = has_dy ? dh[k] + dy[k] : dh[k];
        REAL dct = g_h * go * ((REAL)1 - tc * tc);
        if (has_dc) dct += dc[k];
        dA[row] = dct * gg * (gi * ((REAL)1 - gi));
        dA[row + H] = dct * c_prev[k] * (gf * ((REAL)1 - gf));
        dA[row + 2 * H] = dct * gi * ((REAL)1 - gg * gg);
        dA[row + 3 * H] = g_h * tc * (go * ((REAL)1 - go));
        dc_prev[k] = dct * gf;
    }
}

// -------------------------------------------------------------------------------- GRU
// xw = x W_ih^T + b_ih (B, 3H); hw = h_prev W_hh^T (B, 3H), plus b_hh (3H,) where has_bhh
// (else hw holds the bias already); gates (B, 3H) receives [r, z, n]:
// r = sigma(xw_r + hw_r), z = sigma(xw_z + hw_z), n = tanh(xw_n + r * hw_n),
// h = n + z * (h_prev - n); and hw_out (B, H) receives hw_n (bias included) where has_hw_out
// (the backward's input). xw and gates may be the same buffer.
extern "C" __global__ void rk_gru_forward(const REAL* xw, const REAL* hw, const REAL* b_hh, int has_bhh,
                                          const REAL* h_prev, REAL* gates, REAL* h, REAL* hw_out,
                                          int has_hw_out, rk_index n, rk_index H) {
    RK_GRID_LOOP(k, n) {
        const rk_index b = k / H, j = k - b * H;
        const rk_index row = b * 3 * H + j;
        REAL hr = hw[row], hz = hw[row + H], hn = hw[row + 2 * H];
        if (has_bhh) {
            hr += b_hh[j];
            hz += b_hh[j + H];
            hn += b_hh[j + 2 * H];
        }
        const REAL r = rk_sigmoid(xw[row] + hr);
        const REAL z = rk_sigmoid(xw[row + H] + hz);
        const REAL nn = rk_tanh(xw[row + 2 * H] + r * hn);
        gates[row] = r;
        gates[row + H] = z;
        gates[row + 2 * H] = nn;
        h[k] = nn + z * (h_prev[k] - nn);
        if (has_hw_out) hw_out[k] = hn;
    }
}

// gates (B, 3H) [r, z, n]; hw_n (B, H); the gradient reaching h_t is g = dh (+ dy where
// has_dy). Writes dxw (B, 3H), the gradient of xw, and dhw (B, 3H), that of hw:
// dan = g (1 - z)(1 - n^2); daz = g (h_prev - n) z (1 - z); dar = dan hw_n r (1 - r);
// dxw = [dar, daz, dan], dhw = [dar, daz, dan * r]. With step = 1 (the GPU time loop) it
// also writes dhw_n (B, H) = dan * r (may be hw_n itself) and, over dh, the direct path
// g * z to h_prev, which the next GEMM (beta = 1) adds dhw W_hh to; with step = 0 (the
// reference's contract) dh is only read and the direct path is the caller's.
// dxw may be gates itself.
extern "C" __global__ void rk_gru_backward(const REAL* gates, const REAL* hw_n, const REAL* h_prev, REAL* dh,
                                           const REAL* dy, int has_dy, REAL* dxw, REAL* dhw, REAL* dhw_n,
                                           int step, rk_index n, rk_index H) {
    RK_GRID_LOOP(k, n) {
        const rk_index b = k / H, j = k - b * H;
        const rk_index row = b * 3 * H + j;
        const REAL r = gates[row], z = gates[row + H], nn = gates[row + 2 * H];
        const REAL g_h = has_dy ? dh[k] + dy[k] : dh[k];
        const REAL dan = g_h * ((REAL)1 - z) * ((REAL)1 - nn * nn);
        const REAL daz = g_h * (h_prev[k] - nn) * (z * ((REAL)1 - z));
        const REAL dar = dan * hw_n[k] * (r * ((REAL)1 - r));
        dxw[row] = dar;
        dxw[row + H] = daz;
        dxw[row + 2 * H] = dan;
        dhw[row] = dar;
        dhw[row + H] = daz;
        dhw[row + 2 * H] = dan * r;
        if (step) {
            dhw_n[k] = dan * r;
            dh[k] = g_h * z;
        }
    }
}

// -------------------------------------------------------------------------------- RNN
// relu = 0: h = tanh(a); relu = 1: h = max(a, 0). a and h may be the same buffer.
extern "C" __global__ void rk_rnn_forward(const REAL* a, REAL* h, int relu, rk_index n) {
    RK_GRID_LOOP(k, n) {
        const REAL v = a[k];
        h[k] = relu ? (v > (REAL)0 ? v : (REAL)0) : rk_tanh(v);
    }
}

// da = g * act'(a), from the output h: tanh' = 1 - h^2, relu' = [h > 0]; g = dh (+ dy
// where has_dy), the gradient reaching h.
extern "C" __global__ void rk_rnn_backward(const REAL* h, const REAL* dh, const REAL* dy, int has_dy, REAL* da,
                                           int relu, rk_index n) {
    RK_GRID_LOOP(k, n) {
        const REAL y = h[k];
        const REAL g_h = has_dy ? dh[k] + dy[k] : dh[k];
        da[k] = relu ? (y > (REAL)0 ? g_h : (REAL)0) : g_h * ((REAL)1 - y * y);
    }
}

// ====================================================================== persistent loops
// The whole time loop of one direction in one launch, for each cell (opt-in: kernels.cuda.persistent).
// Block b owns the hidden units [b*u, b*u + u) of every gate; it keeps their rows of W_hh
// (forward) or their columns (backward) in shared memory for all T steps, and the blocks
// meet at a grid barrier once per step: no launch, no host round trip and no reload of
// W_hh between steps. Launched cooperatively (all blocks resident, one per SM at most), so
// the barrier cannot deadlock. Shared memory rows are padded to an odd stride (bank
// conflicts between the units a warp reads side by side).
//
// Global memory written by another block is read with __ldcg (L2, never a stale L1 line).

#ifndef RK_DYNAMIC_SHARED
#define RK_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

// All blocks wait here until every block has arrived. bar[0] counts arrivals, bar[1] is the
// generation; both start at 0. *gen is the caller's own count of barriers passed (thread 0's).
__device__ __forceinline__ void rk_grid_sync(unsigned int* bar, unsigned int nblocks, unsigned int* gen) {
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned int target = *gen + 1;
        __threadfence();  // this block's writes, before its arrival is seen
        if (atomicAdd(bar, 1u) == nblocks - 1) {
            atomicExch(bar, 0u);
            __threadfence();
            atomicExch(bar + 1, target);
        } else {
            while (atomicAdd(bar + 1, 0u) < target) {
                __nanosleep(32);
            }
        }
        *gen = target;
        __threadfence();
    }
    __syncthreads();
}

__device__ __forceinline__ rk_index rk_padded(rk_index n) { return n | 1; }

// MODE: 0 RNN (NG = 1 gate block), 1 LSTM (4: i, f, g, o), 2 GRU (3: r, z, n).
//
// Forward. xw: step t's x W_ih^T + bias (B, NG*H) at xw + t * xw_step (xw_step < 0 for a
// reverse direction's view). LSTM: replaced by the activated gates. GRU: read only; the
// gates [r, z, n] go to `gates` (T, B, 3H) and h W_hn^T + b_hn to aux (T, B, H); b_hh
// (3H,) is added to h W_hh^T where has_bhh. RNN: h = tanh (relu = 0) or max(., 0).
// Hs, Cs (T+1, B, H) hold h_0, c_0 at [0] and receive the rest; LSTM: tanh(c) to aux.
// Shared: W rows (NG*u x Hp) then h_{t-1} (B x Hp), Hp = H | 1.
template <int NG, int MODE>
__device__ __forceinline__ void rk_persistent_forward(REAL* xw, rk_index xw_step, const REAL* W_hh,
                                                      const REAL* b_hh, int has_bhh, int relu, REAL* gates,
                                                      REAL* Hs, REAL* Cs, REAL* aux, unsigned int* bar,
                                                      rk_index T, rk_index B, rk_index H, rk_index u) {
    RK_DYNAMIC_SHARED(rk_smem);
    REAL* w = (REAL*)rk_smem;
    const rk_index Hp = rk_padded(H), G = NG * H;
    REAL* hs = w + NG * u * Hp;
    const rk_index j0 = (rk_index)blockIdx.x * u;
    const rk_index nu = (H - j0 < u) ? (H - j0) : u;
    unsigned int gen = 0;
    for (rk_index idx = threadIdx.x; idx < NG * nu * H; idx += blockDim.x) {
        const rk_index g = idx / (nu * H), rest = idx - g * nu * H, jj = rest / H, k = rest - jj * H;
        w[(g * u + jj) * Hp + k] = W_hh[(g * H + j0 + jj) * H + k];
    }
    for (rk_index t = 0; t < T; ++t) {
        const REAL* h_prev = Hs + t * B * H;
        for (rk_index idx = threadIdx.x; idx < B * H; idx += blockDim.x) {
            const rk_index b = idx / H, k = idx - b * H;
            hs[b * Hp + k] = __ldcg(h_prev + idx);
        }
        __syncthreads();
        REAL* a = xw + t * xw_step;
        for (rk_index p = threadIdx.x; p < B * nu; p += blockDim.x) {
            const rk_index b = p / nu, jj = p - b * nu, j = j0 + jj, k = b * H + j;
            REAL* ab = a + b * G + j;
            const REAL* hb = hs + b * Hp;
            REAL s[NG];
#pragma unroll
            for (int g = 0; g < NG; ++g) s[g] = (MODE == 2) ? (REAL)0 : ab[g * H];
            for (rk_index kk = 0; kk < H; ++kk) {
                const REAL hv = hb[kk];
#pragma unroll
                for (int g = 0; g < NG; ++g) s[g] += hv * w[(g * u + jj) * Hp + kk];
            }
            if (MODE == 1) {
                const REAL gi = rk_sigmoid(s[0]), gf = rk_sigmoid(s[1]), gg = rk_tanh(s[2]);
                const REAL go = rk_sigmoid(s[NG - 1]);
                ab[0] = gi;
                ab[H] = gf;
                ab[2 * H] = gg;
                ab[3 * H] = go;
                const REAL cn = gf * Cs[t * B * H + k] + gi * gg;
                const REAL tc = rk_tanh(cn);
                Cs[(t + 1) * B * H + k] = cn;
                aux[t * B * H + k] = tc;
                Hs[(t + 1) * B * H + k] = go * tc;
            } else if (MODE == 2) {
                REAL hr = s[0], hz = s[1 % NG], hn = s[2 % NG];
                if (has_bhh) {
                    hr += b_hh[j];
                    hz += b_hh[H + j];
                    hn += b_hh[2 * H + j];
                }
                const REAL r = rk_sigmoid(ab[0] + hr);
                const REAL z = rk_sigmoid(ab[H] + hz);
                const REAL nn = rk_tanh(ab[2 * H] + r * hn);
                REAL* gb = gates + t * B * G + b * G + j;
                gb[0] = r;
                gb[H] = z;
                gb[2 * H] = nn;
                aux[t * B * H + k] = hn;
                Hs[(t + 1) * B * H + k] = nn + z * (hb[j] - nn);
            } else {
                const REAL v = s[0];
                Hs[(t + 1) * B * H + k] = relu ? (v > (REAL)0 ? v : (REAL)0) : rk_tanh(v);
            }
        }
        rk_grid_sync(bar, gridDim.x, &gen);  // h_t complete before any block reads it
    }
}

// Backward (BPTT). dxw: step t's gates at dxw + t * g_step (LSTM, GRU: the activated gates;
// RNN: unused), replaced by the gradient of x W_ih^T + b_ih. GRU: dhw_n (T, B, H) holds
// h W_hn^T + b_hn in and receives its gradient, dan * r. dy (T, B, H) where has_dy; dh (B, H):
// the gradient reaching h_T in, h_0 out; LSTM: dc likewise for c. Each block reads and writes
// only its own units of dh and dc; the step's gradient of h W_hh^T (dA_t; the GRU's
// [dar, daz] from dxw and dan * r from dhw_n) crosses blocks, once per step, after the
// barrier: dh_{t-1}[:, k] = direct path + dA_t W_hh[:, k] for the block's k, dA_t staged
// through shared memory R columns at a time. Shared: W_hh's columns (u x Gp), then the
// tile (B x Rp), Rp = R | 1.
template <int NG, int MODE>
__device__ __forceinline__ void rk_persistent_backward(REAL* dxw, rk_index g_step, REAL* dhw_n, const REAL* Hs,
                                                       const REAL* Cs, const REAL* tanh_c, const REAL* W_hh,
                                                       const REAL* dy, int has_dy, int relu, REAL* dh, REAL* dc,
                                                       unsigned int* bar, rk_index T, rk_index B, rk_index H,
                                                       rk_index u, rk_index R) {
    RK_DYNAMIC_SHARED(rk_smem);
    REAL* w = (REAL*)rk_smem;
    const rk_index G = NG * H, Gp = rk_padded(G), Rp = rk_padded(R);
    REAL* tile = w + u * Gp;
    const rk_index j0 = (rk_index)blockIdx.x * u;
    const rk_index nu = (H - j0 < u) ? (H - j0) : u;
    unsigned int gen = 0;
    for (rk_index idx = threadIdx.x; idx < nu * G; idx += blockDim.x) {
        const rk_index r = idx / nu, kk = idx - r * nu;
        w[kk * Gp + r] = W_hh[r * H + j0 + kk];
    }
    __syncthreads();
    for (rk_index t = T - 1; t >= 0; --t) {
        REAL* dA = dxw + t * g_step;
        REAL* dn = dhw_n + t * B * H;  // GRU only
        for (rk_index p = threadIdx.x; p < B * nu; p += blockDim.x) {
            const rk_index b = p / nu, j = j0 + (p - b * nu), k = b * H + j;
            REAL* ab = dA + b * G + j;
            const REAL g_h = has_dy ? dh[k] + dy[t * B * H + k] : dh[k];
            if (MODE == 1) {
                const REAL gi = ab[0], gf = ab[H], gg = ab[2 * H], go = ab[3 * (NG / 4) * H];
                const REAL tc = tanh_c[t * B * H + k];
                const REAL dct = dc[k] + g_h * go * ((REAL)1 - tc * tc);
                ab[0] = dct * gg * (gi * ((REAL)1 - gi));
                ab[H] = dct * Cs[t * B * H + k] * (gf * ((REAL)1 - gf));
                ab[2 * H] = dct * gi * ((REAL)1 - gg * gg);
                ab[3 * (NG / 4) * H] = g_h * tc * (go * ((REAL)1 - go));
                dc[k] = dct * gf;
                dh[k] = 0;
            } else if (MODE == 2) {
                const REAL r = ab[0], z = ab[H], nn = ab[2 * H];
                const REAL dan = g_h * ((REAL)1 - z) * ((REAL)1 - nn * nn);
                const REAL daz = g_h * (Hs[t * B * H + k] - nn) * (z * ((REAL)1 - z));
                const REAL dar = dan * dn[k] * (r * ((REAL)1 - r));
                ab[0] = dar;
                ab[H] = daz;
                ab[2 * H] = dan;
                dn[k] = dan * r;
                dh[k] = g_h * z;  // the direct path to h_{t-1}; the GEMM part is added below
            } else {
                const REAL y = Hs[(t + 1) * B * H + k];
                ab[0] = relu ? (y > (REAL)0 ? g_h : (REAL)0) : g_h * ((REAL)1 - y * y);
                dh[k] = 0;
            }
        }
        rk_grid_sync(bar, gridDim.x, &gen);  // dA_t complete before any block reads it
        // dh_{t-1} += dA_t W_hh[:, own units]: one (row, unit) pair a thread, blockDim.x pairs at a
        // time (the launch gives every pair a thread, so once), dA_t's columns R at a time
        for (rk_index p0 = 0; p0 < B * nu; p0 += blockDim.x) {
            const rk_index p = p0 + threadIdx.x;
            const bool active = p < B * nu;
            const rk_index b = active ? p / nu : 0, kk = active ? p - b * nu : 0;
            const REAL* wc = w + kk * Gp;
            REAL s0 = 0, s1 = 0;
            for (rk_index r0 = 0; r0 < G; r0 += R) {
                const rk_index nr = (G - r0 < R) ? (G - r0) : R;
                for (rk_index idx = threadIdx.x; idx < B * nr; idx += blockDim.x) {
                    const rk_index bb = idx / nr, r = idx - bb * nr, col = r0 + r;
                    tile[bb * Rp + r] = (MODE == 2 && col >= 2 * H) ? __ldcg(dn + bb * H + col - 2 * H)
                                                                    : __ldcg(dA + bb * G + col);
                }
                __syncthreads();
                if (active) {
                    const REAL* tb = tile + b * Rp;
                    const REAL* wr = wc + r0;
                    rk_index r = 0;
                    for (; r + 1 < nr; r += 2) {  // two chains
                        s0 += tb[r] * wr[r];
                        s1 += tb[r + 1] * wr[r + 1];
                    }
                    if (r < nr) s0 += tb[r] * wr[r];
                }
                __syncthreads();  // the tile is read by all before the next chunk replaces it
            }
            if (active) dh[b * H + j0 + kk] += s0 + s1;
        }
        // no grid barrier here: the next step reads only this block's own units of dh and dc,
        // and writes dA_{t-1}, which no block reads before the next barrier
    }
}

#define RK_PERSISTENT_ENTRIES(cell, NG, MODE)                                                                  \
    extern "C" __global__ void rk_##cell##_persistent_forward(                                                 \
        REAL* xw, rk_index xw_step, const REAL* W_hh, const REAL* b_hh, int has_bhh, int relu, REAL* gates,     \
        REAL* Hs, REAL* Cs, REAL* aux, unsigned int* bar, rk_index T, rk_index B, rk_index H, rk_index u) {     \
        rk_persistent_forward<NG, MODE>(xw, xw_step, W_hh, b_hh, has_bhh, relu, gates, Hs, Cs, aux, bar, T, B, \
                                        H, u);                                                                 \
    }                                                                                                          \
    extern "C" __global__ void rk_##cell##_persistent_backward(                                                \
        REAL* dxw, rk_index g_step, REAL* dhw_n, const REAL* Hs, const REAL* Cs, const REAL* tanh_c,            \
        const REAL* W_hh, const REAL* dy, int has_dy, int relu, REAL* dh, REAL* dc, unsigned int* bar,          \
        rk_index T, rk_index B, rk_index H, rk_index u, rk_index R) {                                          \
        rk_persistent_backward<NG, MODE>(dxw, g_step, dhw_n, Hs, Cs, tanh_c, W_hh, dy, has_dy, relu, dh, dc,   \
                                         bar, T, B, H, u, R);                                                  \
    }

RK_PERSISTENT_ENTRIES(rnn, 1, 0)
RK_PERSISTENT_ENTRIES(lstm, 4, 1)
RK_PERSISTENT_ENTRIES(gru, 3, 2)

// ============================================================== softmax cross-entropy rows
// The output layer's loss and its gradient, one block per row of z (N, V), in place:
// neg_logp[row] = log(sum_v exp(z_v - m)) + m - z_t, m = max_v z_v; and where grad, z is
// replaced by scale * (softmax(z) - onehot(t)), times valid[row] where has_valid (rows not
// counted get zeros). Three passes over the row (max, sum, gradient), the row cached on chip
// between them. blockDim.x is a power of two; shared memory: blockDim.x REALs.
extern "C" __global__ void rk_softmax_xent_rows(REAL* z, const long long* t, const unsigned char* valid,
                                                int has_valid, REAL scale, int grad, REAL* neg_logp,
                                                rk_index N, rk_index V) {
    RK_DYNAMIC_SHARED(rk_smem_rows);
    REAL* red = (REAL*)rk_smem_rows;
    for (rk_index row = blockIdx.x; row < N; row += gridDim.x) {
        REAL* zr = z + row * V;
        REAL m = zr[0];  // a value of the row: no infinity needed (a NaN still reaches the loss, by the sum)
        for (rk_index v = threadIdx.x; v < V; v += blockDim.x) m = fmax(m, zr[v]);
        red[threadIdx.x] = m;
        __syncthreads();
        for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
            if (threadIdx.x < s) red[threadIdx.x] = fmax(red[threadIdx.x], red[threadIdx.x + s]);
            __syncthreads();
        }
        m = red[0];
        __syncthreads();
        REAL sum = 0;
        for (rk_index v = threadIdx.x; v < V; v += blockDim.x) sum += exp(zr[v] - m);
        red[threadIdx.x] = sum;
        __syncthreads();
        for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
            if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
            __syncthreads();
        }
        sum = red[0];
        const long long target = t[row];
        if (threadIdx.x == 0) neg_logp[row] = log(sum) + m - zr[target];
        __syncthreads();  // zr[target] read before the gradient overwrites it
        if (grad) {
            const REAL rs = (has_valid && !valid[row]) ? (REAL)0 : scale;
            const REAL inv = rs / sum;
            for (rk_index v = threadIdx.x; v < V; v += blockDim.x) {
                const REAL g = exp(zr[v] - m) * inv;
                zr[v] = (v == target) ? g - rs : g;
            }
        }
        __syncthreads();  // red[] is reused by the next row
    }
}

// ====================================================================== optimizer steps
// One launch per parameter where the array expressions take 2 (SGD) or ~13 (Adam), and the
// gradient norm's sums of squares without a float64 copy of each gradient.

// p -= lr * g
extern "C" __global__ void rk_sgd_step(REAL* p, const REAL* g, REAL lr, rk_index n) {
    RK_GRID_LOOP(k, n) p[k] -= lr * g[k];
}

// Adam with bias correction, as optim.Adam's array expressions: m = b1 m + (1 - b1) g;
// v = b2 v + (1 - b2) g^2; p -= step * m / (sqrt(v / bias2) + eps), step = lr / (1 - b1^t),
// bias2 = 1 - b2^t.
extern "C" __global__ void rk_adam_step(REAL* p, const REAL* g, REAL* m, REAL* v, REAL b1, REAL b2, REAL eps,
                                        REAL bias2, REAL step, rk_index n) {
    RK_GRID_LOOP(k, n) {
        const REAL gk = g[k];
        const REAL mk = m[k] * b1 + ((REAL)1 - b1) * gk;
        const REAL vk = v[k] * b2 + ((REAL)1 - b2) * (gk * gk);
        m[k] = mk;
        v[k] = vk;
        p[k] -= step * (mk / (sqrt(vk / bias2) + eps));
    }
}

// partials[blockIdx.x] = this block's share of sum(g^2), accumulated in double (a fixed
// partition of g for a given grid: the same sum every time). blockDim.x is a power of two;
// shared memory: blockDim.x doubles.
extern "C" __global__ void rk_sumsq(const REAL* g, rk_index n, double* partials) {
    RK_DYNAMIC_SHARED(rk_smem_sumsq);
    double* red = (double*)rk_smem_sumsq;
    double s = 0;
    RK_GRID_LOOP(k, n) {
        const double x = g[k];
        s += x * x;
    }
    red[threadIdx.x] = s;
    __syncthreads();
    for (unsigned int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) red[threadIdx.x] += red[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) partials[blockIdx.x] = red[0];
}
