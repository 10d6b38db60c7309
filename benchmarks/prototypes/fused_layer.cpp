// PROTOTYPE, measured in benchmarks/bench_fused_prototype.py, not used by cimcal: one analog layer's forward
// (linear or conv on one tile: DAC, noisy pairs, tile GEMMs or conv, ADC conversion) in one C++ call whose loops run on torch's own thread
// pool (at::parallel_for), against cimcal's numba kernels, which run on a second OpenMP pool with the tile
// matmuls and the Python glue between them. The same arithmetic as cimcal/analog/kernels.py for the benchmark
// chip's case (a staircase of at most 8 level steps, a full code table, no saturation mask, no pair compensation,
// finite inputs, convolutions on one tile), so its outputs equal the kernels' bit for bit there (the script
// checks). Not covered: NaN and -0.0 weights, step tables, the mask, compensation, fixed instances, convolutions
// on several tiles, the calibration (the script does the calibration's work beside it). Built with -ffinite-math-only and -ffp-contract=off.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstdint>
#include <vector>
#include <cstring>

static inline uint64_t philox(uint64_t c0, uint64_t c1, uint64_t key) {
  const uint64_t M = 0xD256D193ull, W = 0x9E3779B9ull, MASK = 0xFFFFFFFFull;
  uint64_t x0 = c0, x1 = c1, k = key;
  for (int r = 0; r < 10; ++r) {
    uint64_t p = M * x0;
    x0 = ((p >> 32) ^ k ^ x1) & MASK;
    x1 = p & MASK;
    k = (k + W) & MASK;
  }
  return (x1 << 32) | x0;
}

static inline void fill_row_bits(uint64_t* words, int64_t groups, uint64_t row, uint64_t nonce, uint64_t key) {
  const uint64_t MASK = 0xFFFFFFFFull;
  uint64_t g0 = row * (uint64_t)groups;
  for (int64_t g = 0; g < groups; ++g) {
    uint64_t c = g0 + (uint64_t)g;
    words[g] = philox(c & MASK, (nonce + (c >> 32)) & MASK, key);
  }
}

constexpr int64_t BLOCK = 1 << 14;

struct Adc {  // one layer call's converter constants
  const int32_t* col_base; std::vector<float> deq_gain, deq_offset; const uint8_t* table;
  float grid_scale, grid_shift, interp, last; uint64_t key, nonce;
};

static torch::Tensor dac(const torch::Tensor& x, double in_scale, int64_t dac_bits) {
  auto xq = torch::empty_like(x);
  const float* xs = x.data_ptr<float>(); float* out = xq.data_ptr<float>();
  const float scale = (float)in_scale, q_max = (float)((1 << (dac_bits - 1)) - 1), step = 1.0f / q_max;
  at::parallel_for(0, x.numel(), BLOCK, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      float v = std::min(std::max(xs[i] / scale, -1.0f), 1.0f);
      out[i] = std::nearbyint(v * q_max) * step;
    }
  });
  return xq;
}

// noisy unit weights of every pair of w (O, K) and max|w| per row
static std::vector<torch::Tensor> pairs(const torch::Tensor& w2d, const torch::Tensor& level_steps, int64_t level_base,
                                        const torch::Tensor& read_unit, uint64_t key, uint64_t nonce) {
  const int64_t O = w2d.size(0), K = w2d.size(1);
  auto wn = torch::empty_like(w2d);
  auto w_max = torch::empty({O}, w2d.options());
  const float* ws = w2d.data_ptr<float>(); float* out = wn.data_ptr<float>(); float* wm = w_max.data_ptr<float>();
  const float* ru = read_unit.data_ptr<float>(); const float* st = level_steps.data_ptr<float>();
  const float top = 1023.0f;
  const int64_t groups = (K + 3) / 4;
  const int64_t per = std::max<int64_t>(1, BLOCK / std::max<int64_t>(1, K));
  at::parallel_for(0, O, per, [&](int64_t b, int64_t e) {
    std::vector<uint64_t> words(groups);
    std::vector<int32_t> level(K);
    for (int64_t i = b; i < e; ++i) {
      const float* row = ws + i * K;
      uint32_t m = 0;
      for (int64_t j = 0; j < K; ++j) { uint32_t bits; std::memcpy(&bits, row + j, 4); m = std::max(m, bits & 0x7FFFFFFFu); }
      float mv; std::memcpy(&mv, &m, 4); mv = std::max(mv, 1e-12f);
      wm[i] = mv; const float s = 1.0f / mv;
      fill_row_bits(words.data(), groups, (uint64_t)i, nonce, key);
      const uint16_t* r16 = reinterpret_cast<const uint16_t*>(words.data());
      for (int64_t j = 0; j < K; ++j) {
        float xx = std::fabs(row[j] * s) * top + 0.5f;
        int32_t c = (int32_t)level_base;
        for (int k = 0; k < 8; ++k) c += (int32_t)(xx >= st[k]);
        level[j] = c;
      }
      float* __restrict o = out + i * K;
      const int32_t* __restrict lv = level.data();
      const float* __restrict rr = row;
      const float* __restrict rut = ru;
      for (int64_t j = 0; j < K; ++j) {
        int32_t r = r16[j];
        float ga = rut[lv[j] * 256 + (r & 255)], gi = rut[r >> 8];
        float v = rr[j] * s, d = ga - gi;
        uint32_t db, vb; std::memcpy(&db, &d, 4); std::memcpy(&vb, &v, 4);
        db ^= vb & 0x80000000u;  // sign * d (a -0.0 weight differs from the kernels: outside the prototype's cases)
        std::memcpy(o + j, &db, 4);
      }
    }
  });
  return {wn, w_max};
}

static Adc make_adc(const torch::Tensor& w_max, const torch::Tensor& col_base, const torch::Tensor& col_gain,
                    const torch::Tensor& col_offset, double factor, double grid_scale, double grid_shift, double interp,
                    int64_t n_points, const torch::Tensor& codes, uint64_t key, uint64_t nonce) {
  const int64_t O = w_max.numel();
  Adc adc{col_base.data_ptr<int32_t>(), std::vector<float>(O), std::vector<float>(O), codes.data_ptr<uint8_t>(),
          (float)grid_scale, (float)grid_shift, (float)interp, (float)(n_points - 1), key, nonce};
  const float* cg = col_gain.data_ptr<float>(); const float* co = col_offset.data_ptr<float>();
  const float* wmx = w_max.data_ptr<float>();
  for (int64_t j = 0; j < O; ++j) {
    float sc = wmx[j] * (float)factor;
    adc.deq_gain[j] = cg[j] * sc; adc.deq_offset[j] = co[j] * sc;
  }
  return adc;
}

// convert psum (N, O, inner) into acc (= or +=); row a draws row row0 + a of the stream
static void convert(const Adc& adc, const float* ps, float* acc, int64_t N, int64_t O, int64_t inner, bool first,
                    uint64_t row0) {
  const int64_t R = O * inner, groups = (R + 3) / 4;
  const int64_t per = std::max<int64_t>(1, BLOCK / std::max<int64_t>(1, R));
  at::parallel_for(0, N, per, [&](int64_t b, int64_t e) {
    std::vector<uint64_t> words(groups);
    std::vector<int32_t> index_v(R);
    std::vector<float> code_v(R);
    int32_t* __restrict index = index_v.data();
    float* __restrict code = code_v.data();
    const float* __restrict dg = adc.deq_gain.data();
    const float* __restrict dof = adc.deq_offset.data();
    for (int64_t a = b; a < e; ++a) {
      fill_row_bits(words.data(), groups, row0 + (uint64_t)a, adc.nonce, adc.key);
      const uint16_t* __restrict r16 = reinterpret_cast<const uint16_t*>(words.data());
      const float* __restrict p = ps + a * R;
      auto index_of = [&](float pq, uint16_t bits, int32_t cb) {
        float position = std::fmin(std::fmax(pq * adc.grid_scale + adc.grid_shift, 0.0f), adc.last);
        int32_t below = (int32_t)position;
        float high = (float)(bits >> 8);
        float threshold = (high + 0.5f) * adc.interp + 128.0f * (1.0f - adc.interp);
        int32_t point = below + (int32_t)(threshold < (position - (float)below) * 256.0f);
        return cb + point * 256 + (int32_t)(bits & 255);
      };
      if (inner == 1) {  // linear layers: flat loops over the outputs (they vectorize)
        for (int64_t j = 0; j < O; ++j) index[j] = index_of(p[j], r16[j], adc.col_base[j]);
      } else {
        for (int64_t j = 0; j < O; ++j) {
          const int32_t cb = adc.col_base[j];
          for (int64_t q = j * inner; q < (j + 1) * inner; ++q) index[q] = index_of(p[q], r16[q], cb);
        }
      }
      for (int64_t q = 0; q < R; ++q) { int32_t v; std::memcpy(&v, adc.table + index[q], 4); code[q] = (float)(v & 255); }
      float* ac = acc + a * R;
      if (inner == 1) {
        if (first) {
          for (int64_t j = 0; j < O; ++j) { float pj = p[j]; ac[j] = code[j] * dg[j] + dof[j] + (pj - pj); }
        } else {
          for (int64_t j = 0; j < O; ++j) { float pj = p[j]; ac[j] += code[j] * dg[j] + dof[j] + (pj - pj); }
        }
        continue;
      }
      for (int64_t j = 0; j < O; ++j) {
        const float g = dg[j], o = dof[j];
        if (first) {
          for (int64_t q = j * inner; q < (j + 1) * inner; ++q) { float pq = p[q]; ac[q] = code[q] * g + o + (pq - pq); }
        } else {
          for (int64_t q = j * inner; q < (j + 1) * inner; ++q) { float pq = p[q]; ac[q] += code[q] * g + o + (pq - pq); }
        }
      }
    }
  });
}

// y (N, O) = sum over tiles of the ADC read-back of each tile's partial sums; returns (y, w_max)
std::vector<torch::Tensor> analog_linear(
    torch::Tensor x, torch::Tensor w, double in_scale, int64_t dac_bits, torch::Tensor level_steps, int64_t level_base,
    torch::Tensor read_unit, uint64_t key, uint64_t nonce_w, uint64_t nonce_adc, int64_t tile_rows,
    torch::Tensor col_base, torch::Tensor col_gain, torch::Tensor col_offset, double factor,
    double grid_scale, double grid_shift, double interp, int64_t n_points, torch::Tensor codes) {
  const int64_t N = x.size(0), K = x.size(1), O = w.size(0);
  auto xq = dac(x, in_scale, dac_bits);
  auto pw = pairs(w, level_steps, level_base, read_unit, key, nonce_w);
  auto& wn = pw[0];
  const Adc adc = make_adc(pw[1], col_base, col_gain, col_offset, factor, grid_scale, grid_shift, interp, n_points,
                           codes, key, nonce_adc);
  auto y = torch::empty({N, O}, x.options());
  auto psum = torch::empty({N, O}, x.options());
  int64_t t = 0;
  for (int64_t start = 0; start < K; start += tile_rows, ++t) {
    const int64_t len = std::min(tile_rows, K - start);
    const bool first = start == 0;
    auto target = first ? y : psum;
    at::mm_out(target, xq.narrow(1, start, len), wn.narrow(1, start, len).t());
    convert(adc, target.data_ptr<float>(), y.data_ptr<float>(), N, O, 1, first, (uint64_t)(t * N));
  }
  return {y, pw[1]};
}

// a conv whose kernel patches fit one tile: y (N, O, H', W'); returns (y, w_max)
std::vector<torch::Tensor> analog_conv(
    torch::Tensor x, torch::Tensor w, std::vector<int64_t> stride, std::vector<int64_t> padding,
    std::vector<int64_t> dilation, double in_scale, int64_t dac_bits, torch::Tensor level_steps, int64_t level_base,
    torch::Tensor read_unit, uint64_t key, uint64_t nonce_w, uint64_t nonce_adc,
    torch::Tensor col_base, torch::Tensor col_gain, torch::Tensor col_offset, double factor,
    double grid_scale, double grid_shift, double interp, int64_t n_points, torch::Tensor codes) {
  auto xq = dac(x, in_scale, dac_bits);
  auto pw = pairs(w.reshape({w.size(0), -1}), level_steps, level_base, read_unit, key, nonce_w);
  const Adc adc = make_adc(pw[1], col_base, col_gain, col_offset, factor, grid_scale, grid_shift, interp, n_points,
                           codes, key, nonce_adc);
  auto y = at::conv2d(xq, pw[0].view_as(w), {}, stride, padding, dilation).contiguous();
  const int64_t N = y.size(0), O = y.size(1), inner = y.size(2) * y.size(3);
  convert(adc, y.data_ptr<float>(), y.data_ptr<float>(), N, O, inner, true, 0);
  return {y, pw[1]};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("analog_linear", &analog_linear);
  m.def("analog_conv", &analog_conv);
}
