// The cells' pointwise math as CUDA kernels: one launch per step and direction.
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
// that runs the grid on the CPU (the math and the indexing, against the reference).
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
