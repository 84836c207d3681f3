//! Elementwise ops: unary functions, broadcasting binary ops, comparisons,
//! logic, `where`, `cast`, `clamp`.

use super::*;
use DType::*;

const NAN: f64 = f64::NAN;
const INF: f64 = f64::INFINITY;

/// The shared input of most unary tests, as `f64[1, 7]` (a size-1 axis and
/// an odd size).
const XS: [f64; 7] = [-3.5, -1.5, -0.5, 0.0, 0.5, 1.0, 2.5];

fn xs() -> Tensor {
    f64t(&[1, 7], &XS)
}

#[track_caller]
fn check_unary(call: &str, x: &Tensor, exp: &[f64]) {
    let y = unary(call, x);
    assert_close(&y, x.dtype, &x.shape, exp, REL64, 0.0);
}

#[test]
fn neg_abs_relu_relu6_on_floats() {
    let x = f64t(&[1, 7], &[-7.5, -1.5, -0.0, 0.0, 3.0, 6.0, 9.25]);
    // by hand
    check_unary("neg(%x)", &x, &[7.5, 1.5, 0.0, -0.0, -3.0, -6.0, -9.25]);
    check_unary("abs(%x)", &x, &[7.5, 1.5, 0.0, 0.0, 3.0, 6.0, 9.25]);
    check_unary("relu(%x)", &x, &[0.0, 0.0, 0.0, 0.0, 3.0, 6.0, 9.25]);
    check_unary("relu6(%x)", &x, &[0.0, 0.0, 0.0, 0.0, 3.0, 6.0, 6.0]);
    // NaN propagates through all of them
    let n = f32t(&[1], &[NAN]);
    for call in ["neg(%x)", "abs(%x)", "relu(%x)", "relu6(%x)"] {
        assert!(unary(call, &n).data[0].is_nan(), "{call}");
    }
}

#[test]
fn neg_abs_relu_sign_clamp_on_integers() {
    let x = t(I8, &[5], &[-128.0, -3.0, 0.0, 7.0, 127.0]);
    // two's complement: -(-128) wraps to -128, |-128| too (as NumPy int8)
    assert_exact(
        &unary("neg(%x)", &x),
        I8,
        &[5],
        &[-128.0, 3.0, 0.0, -7.0, -127.0],
    );
    assert_exact(
        &unary("abs(%x)", &x),
        I8,
        &[5],
        &[-128.0, 3.0, 0.0, 7.0, 127.0],
    );
    assert_exact(
        &unary("relu(%x)", &x),
        I8,
        &[5],
        &[0.0, 0.0, 0.0, 7.0, 127.0],
    );
    assert_exact(
        &unary("relu6(%x)", &x),
        I8,
        &[5],
        &[0.0, 0.0, 0.0, 6.0, 6.0],
    );
    assert_exact(
        &unary("sign(%x)", &x),
        I8,
        &[5],
        &[-1.0, -1.0, 0.0, 1.0, 1.0],
    );
    assert_exact(
        &unary("clamp(%x) {min = -5, max = 100}", &x),
        I8,
        &[5],
        &[-5.0, -3.0, 0.0, 7.0, 100.0],
    );
    let u = t(U8, &[3], &[0.0, 200.0, 255.0]);
    assert_exact(&unary("neg(%x)", &u), U8, &[3], &[0.0, 56.0, 1.0]);
}

#[test]
fn exp_tanh_sigmoid_silu_softplus_erf_sin_cos() {
    let x = xs();
    // numpy: np.exp(x)
    check_unary(
        "exp(%x)",
        &x,
        &[
            0.0301973834223185,
            0.22313016014842982,
            0.6065306597126334,
            1.0,
            1.6487212707001282,
            2.718281828459045,
            12.182493960703473,
        ],
    );
    // numpy: np.tanh(x)
    check_unary(
        "tanh(%x)",
        &x,
        &[
            -0.9981778976111987,
            -0.9051482536448665,
            -0.46211715726000974,
            0.0,
            0.46211715726000974,
            0.7615941559557649,
            0.9866142981514303,
        ],
    );
    // scipy: expit(x)
    check_unary(
        "sigmoid(%x)",
        &x,
        &[
            0.02931223075135632,
            0.18242552380635635,
            0.3775406687981454,
            0.5,
            0.6224593312018546,
            0.7310585786300049,
            0.9241418199787566,
        ],
    );
    // scipy: x * expit(x)
    check_unary(
        "silu(%x)",
        &x,
        &[
            -0.10259280762974712,
            -0.2736382857095345,
            -0.1887703343990727,
            0.0,
            0.3112296656009273,
            0.7310585786300049,
            2.3103545499468914,
        ],
    );
    // numpy: np.logaddexp(0, x)
    check_unary(
        "softplus(%x)",
        &x,
        &[
            0.029750418272620566,
            0.2014132779827524,
            0.4740769841801067,
            0.6931471805599453,
            0.9740769841801067,
            1.3132616875182228,
            2.5788897342925496,
        ],
    );
    // scipy: erf(x)
    check_unary(
        "erf(%x)",
        &x,
        &[
            -0.9999992569016276,
            -0.9661051464753108,
            -0.5204998778130465,
            0.0,
            0.5204998778130465,
            0.8427007929497148,
            0.999593047982555,
        ],
    );
    // numpy: np.sin(x), np.cos(x)
    check_unary(
        "sin(%x)",
        &x,
        &[
            0.35078322768961984,
            -0.9974949866040544,
            -0.479425538604203,
            0.0,
            0.479425538604203,
            0.8414709848078965,
            0.5984721441039565,
        ],
    );
    check_unary(
        "cos(%x)",
        &x,
        &[
            -0.9364566872907963,
            0.0707372016677029,
            0.8775825618903728,
            1.0,
            0.8775825618903728,
            0.5403023058681398,
            -0.8011436155469337,
        ],
    );
}

#[test]
fn log_sqrt_rsqrt_reciprocal() {
    let x = f64t(&[7, 1], &[0.25, 0.5, 1.0, 2.0, 3.0, 10.0, 0.001]);
    // numpy: np.log(x), np.sqrt(x), 1/np.sqrt(x), 1/x
    check_unary(
        "log(%x)",
        &x,
        &[
            -1.3862943611198906,
            -0.6931471805599453,
            0.0,
            0.6931471805599453,
            1.0986122886681098,
            2.302585092994046,
            -6.907755278982137,
        ],
    );
    check_unary(
        "sqrt(%x)",
        &x,
        &[
            0.5,
            0.7071067811865476,
            1.0,
            1.4142135623730951,
            1.7320508075688772,
            3.1622776601683795,
            0.03162277660168379,
        ],
    );
    check_unary(
        "rsqrt(%x)",
        &x,
        &[
            2.0,
            1.414213562373095,
            1.0,
            0.7071067811865475,
            0.5773502691896258,
            0.31622776601683794,
            31.622776601683796,
        ],
    );
    check_unary(
        "reciprocal(%x)",
        &x,
        &[4.0, 2.0, 1.0, 0.5, 0.3333333333333333, 0.1, 1000.0],
    );
    // IEEE special cases
    let s = f32t(&[4], &[0.0, -1.0, INF, -0.0]);
    assert_exact(&unary("log(%x)", &s), F32, &[4], &[-INF, NAN, INF, -INF]);
    assert_exact(&unary("sqrt(%x)", &s), F32, &[4], &[0.0, NAN, INF, -0.0]);
    assert_exact(
        &unary("reciprocal(%x)", &s),
        F32,
        &[4],
        &[INF, -1.0, 0.0, -INF],
    );
    assert_exact(&unary("rsqrt(%x)", &s), F32, &[4], &[INF, NAN, 0.0, -INF]);
}

#[test]
fn sigmoid_and_softplus_do_not_overflow() {
    let x = f64t(&[6], &[-1000.0, -745.0, -50.0, 0.0, 50.0, 1000.0]);
    // scipy: expit(x); exp(-745) is the smallest subnormal, so allow 1e-300 absolute.
    let y = unary("sigmoid(%x)", &x);
    assert_close(
        &y,
        F64,
        &[6],
        &[0.0, 0.0, 1.928749847963918e-22, 0.5, 1.0, 1.0],
        REL64,
        1e-300,
    );
    assert!(y.data.iter().all(|v| v.is_finite()));
    // numpy: np.logaddexp(0, x)
    let y = unary("softplus(%x)", &x);
    assert_close(
        &y,
        F64,
        &[6],
        &[
            0.0,
            5e-324,
            1.9287498479639178e-22,
            0.6931471805599453,
            50.0,
            1000.0,
        ],
        REL64,
        1e-300,
    );
    // silu of large magnitudes: x * sigmoid(x) -> 0 and x
    let y = unary("silu(%x)", &x);
    assert_close(
        &y,
        F64,
        &[6],
        &[0.0, 0.0, -50.0 * 1.928749847963918e-22, 0.0, 50.0, 1000.0],
        REL64,
        1e-300,
    );
}

#[test]
fn unary_f32_results_are_rounded_once() {
    let x = f32t(&[6], &[-100.0, -20.0, -1.25, 0.3, 20.0, 100.0]);
    // numpy: expit(x.astype(f64)).astype(np.float32) (exact f32 values)
    assert_ulps(
        &unary("sigmoid(%x)", &x),
        F32,
        &[6],
        &[
            3.783505853677006e-44,
            2.06115369216775e-09,
            0.22270013391971588,
            0.5744425058364868,
            1.0,
            1.0,
        ],
        0.5,
    );
    // numpy: np.tanh(x64).astype(np.float32)
    assert_ulps(
        &unary("tanh(%x)", &x),
        F32,
        &[6],
        &[
            -1.0,
            -1.0,
            -0.8482836484909058,
            0.29131263494491577,
            1.0,
            1.0,
        ],
        0.5,
    );
    // numpy: np.exp(x64).astype(np.float32); e^100 overflows f32 to inf
    assert_ulps(
        &unary("exp(%x)", &x),
        F32,
        &[6],
        &[
            3.783505853677006e-44,
            2.06115369216775e-09,
            0.2865048050880432,
            1.3498588800430298,
            485165184.0,
            INF,
        ],
        0.5,
    );
    // scipy: (0.5*x*(1+erf(x/sqrt 2))).astype(np.float32)
    assert_ulps(
        &unary("gelu(%x)", &x),
        F32,
        &[6],
        &[
            -0.0,
            -0.0,
            -0.13206221163272858,
            0.1853734403848648,
            20.0,
            100.0,
        ],
        0.5,
    );
}

#[test]
fn unary_bf16_results_round_to_bf16() {
    let x = t(BF16, &[1, 5], &[-3.5, -0.5, 0.0, 1.0, 2.5]);
    // ml_dtypes: np.exp(x).astype(bfloat16): 0.0301973.. -> 0.0301513671875,
    // 0.60653 -> 0.60546875, 1, 2.71828 -> 2.71875, 12.18249 -> 12.1875
    assert_exact(
        &unary("exp(%x)", &x),
        BF16,
        &[1, 5],
        &[0.0301513671875, 0.60546875, 1.0, 2.71875, 12.1875],
    );
    let h = t(F16, &[3], &[0.5, 1.0, 60000.0]);
    // by hand: f16 rounding of 1/x: 2, 1, 1/60000 = 1.6666e-5 -> f16 subnormal
    // spacing 2^-24: round(1.6666e-5 * 2^24) = 280 -> 280 * 2^-24
    assert_exact(
        &unary("reciprocal(%x)", &h),
        F16,
        &[3],
        &[2.0, 1.0, 280.0 * 2f64.powi(-24)],
    );
    // exp(12) = 162754.79 overflows f16 to inf
    let h = t(F16, &[2], &[12.0, -12.0]);
    // numpy: np.float16(np.exp(-12)) = 6.139278411865234e-06
    assert_exact(
        &unary("exp(%x)", &h),
        F16,
        &[2],
        &[INF, 6.139278411865234e-06],
    );
}

#[test]
fn leaky_relu_default_and_custom_alpha() {
    let x = xs();
    // by hand: x >= 0 ? x : alpha * x
    check_unary(
        "leaky_relu(%x)",
        &x,
        &[-0.035, -0.015, -0.005, 0.0, 0.5, 1.0, 2.5],
    );
    check_unary(
        "leaky_relu(%x) {alpha = 0.2}",
        &x,
        &[-0.7, -0.3, -0.1, 0.0, 0.5, 1.0, 2.5],
    );
}

#[test]
fn gelu_exact_and_tanh() {
    let x = xs();
    // scipy: 0.5*x*(1+erf(x/sqrt(2)))
    let exact = [
        -0.0008142017766243903,
        -0.10021080190328713,
        -0.15426876936299347,
        0.0,
        0.3457312306370065,
        0.8413447460685429,
        2.4844758366855597,
    ];
    check_unary("gelu(%x)", &x, &exact);
    check_unary("gelu(%x) {approximate = none}", &x, &exact);
    // numpy: 0.5*x*(1+np.tanh(sqrt(2/pi)*(x+0.044715*x**3)))
    check_unary(
        "gelu(%x) {approximate = tanh}",
        &x,
        &[
            -0.0006161976553737403,
            -0.10042842301976707,
            -0.15428599017485606,
            0.0,
            0.34571400982514394,
            0.8411919906082768,
            2.484915733910001,
        ],
    );
}

#[test]
fn hardswish_hardsigmoid() {
    let x = f64t(&[1, 7], &[-4.0, -3.0, -1.0, 0.0, 1.0, 3.0, 4.0]);
    // by hand: x * clip(x + 3, 0, 6) / 6
    check_unary(
        "hardswish(%x)",
        &x,
        &[0.0, 0.0, -1.0 / 3.0, 0.0, 2.0 / 3.0, 3.0, 4.0],
    );
    // by hand: clip(x / 6 + 0.5, 0, 1)
    check_unary(
        "hardsigmoid(%x)",
        &x,
        &[0.0, 0.0, 1.0 / 3.0, 0.5, 2.0 / 3.0, 1.0, 1.0],
    );
    // ONNX default: clip(0.2 x + 0.5, 0, 1)
    check_unary(
        "hardsigmoid(%x) {alpha = 0.2}",
        &x,
        &[0.0, 0.0, 0.3, 0.5, 0.7, 1.0, 1.0],
    );
    check_unary(
        "hardsigmoid(%x) {alpha = 0.2, beta = 0.6}",
        &x,
        &[0.0, 0.0, 0.4, 0.6, 0.8, 1.0, 1.0],
    );
    // scipy: x*clip(x+3,0,6)/6 for the shared inputs
    check_unary(
        "hardswish(%x)",
        &xs(),
        &[
            -0.0,
            -0.375,
            -0.20833333333333334,
            0.0,
            0.2916666666666667,
            0.6666666666666666,
            2.2916666666666665,
        ],
    );
}

#[test]
fn floor_ceil_round_sign() {
    let x = f64t(
        &[1, 11],
        &[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4, 2.6, -2.6, 3.0, -0.0],
    );
    // by hand; round is half to even
    check_unary(
        "round(%x)",
        &x,
        &[0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 2.0, 3.0, -3.0, 3.0, -0.0],
    );
    check_unary(
        "floor(%x)",
        &x,
        &[0.0, 1.0, 2.0, -1.0, -2.0, -3.0, 2.0, 2.0, -3.0, 3.0, -0.0],
    );
    check_unary(
        "ceil(%x)",
        &x,
        &[1.0, 2.0, 3.0, -0.0, -1.0, -2.0, 3.0, 3.0, -2.0, 3.0, -0.0],
    );
    let s = f32t(&[6], &[-2.0, -0.0, 0.0, 3.5, NAN, -INF]);
    assert_exact(
        &unary("sign(%x)", &s),
        F32,
        &[6],
        &[-1.0, 0.0, 0.0, 1.0, NAN, -1.0],
    );
    // f32 rounding happens before: 2.5000001 in f32 is above the tie
    let r = f32t(&[2], &[2.5000002, -3.5]);
    assert_exact(&unary("round(%x)", &r), F32, &[2], &[3.0, -4.0]);
}

#[test]
fn logical_not() {
    let b = t(Bool, &[1, 3], &[1.0, 0.0, 1.0]);
    assert_exact(&unary("not(%x)", &b), Bool, &[1, 3], &[0.0, 1.0, 0.0]);
}

// ---------------------------------------------------------------------------
// Binary ops
// ---------------------------------------------------------------------------

#[test]
fn add_sub_broadcast_size1_axes() {
    // a [3, 1], b [1, 5] -> [3, 5]
    let a = f32t(&[3, 1], &[1.0, 10.0, 100.0]);
    let b = f32t(&[1, 5], &[0.5, 1.0, 1.5, 2.0, 2.5]);
    let y = op("add(%a, %b)", "f32[3, 5]", &[("a", &a), ("b", &b)]);
    // by hand: a[i] + b[j]
    let mut exp = vec![];
    for ai in [1.0, 10.0, 100.0] {
        for bj in [0.5, 1.0, 1.5, 2.0, 2.5] {
            exp.push(ai + bj);
        }
    }
    assert_exact(&y, F32, &[3, 5], &exp);
    let y = op("sub(%b, %a)", "f32[3, 5]", &[("a", &a), ("b", &b)]);
    let mut exp = vec![];
    for ai in [1.0, 10.0, 100.0] {
        for bj in [0.5, 1.0, 1.5, 2.0, 2.5] {
            exp.push(bj - ai);
        }
    }
    assert_exact(&y, F32, &[3, 5], &exp);
}

#[test]
fn binary_broadcast_rank_extension_and_scalars() {
    // a [7], b [2, 1, 7] -> [2, 1, 7]
    let a = f64t(&[7], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    let bv: Vec<f64> = (0..14).map(|i| (i as f64) * 0.25 - 1.0).collect();
    let b = f64t(&[2, 1, 7], &bv);
    let y = op("sub(%a, %b)", "f64[2, 1, 7]", &[("a", &a), ("b", &b)]);
    let exp: Vec<f64> = (0..14).map(|i| (i % 7 + 1) as f64 - bv[i]).collect();
    assert_close(&y, F64, &[2, 1, 7], &exp, REL64, 0.0);
    // rank-0 operand on either side
    let s = f64t(&[], &[3.0]);
    let m = f64t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let y = op("mul(%s, %m)", "f64[2, 3]", &[("s", &s), ("m", &m)]);
    assert_exact(&y, F64, &[2, 3], &[3.0, 6.0, 9.0, 12.0, 15.0, 18.0]);
    let y = op("div(%m, %s)", "f64[2, 3]", &[("s", &s), ("m", &m)]);
    assert_close(
        &y,
        F64,
        &[2, 3],
        &[1.0 / 3.0, 2.0 / 3.0, 1.0, 4.0 / 3.0, 5.0 / 3.0, 2.0],
        REL64,
        0.0,
    );
    // both rank 0
    let y = op("add(%s, %s)", "f64[]", &[("s", &s)]);
    assert_exact(&y, F64, &[], &[6.0]);
    // [2, 1, 3] with [1, 4, 1] -> [2, 4, 3]
    let a = f64t(&[2, 1, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let b = f64t(&[1, 4, 1], &[10.0, 20.0, 30.0, 40.0]);
    let y = op("mul(%a, %b)", "f64[2, 4, 3]", &[("a", &a), ("b", &b)]);
    let mut exp = vec![];
    for i in 0..2 {
        for j in 0..4 {
            for k in 0..3 {
                exp.push((i * 3 + k + 1) as f64 * ((j + 1) * 10) as f64);
            }
        }
    }
    assert_exact(&y, F64, &[2, 4, 3], &exp);
}

#[test]
fn float_mul_div_specials_and_f32_rounding() {
    let a = f32t(&[5], &[1.0, -1.0, 0.0, 1.0, 7.0]);
    let b = f32t(&[5], &[0.0, 0.0, 0.0, 3.0, -2.0]);
    // IEEE: 1/0 = inf, -1/0 = -inf, 0/0 = NaN; 1/3 rounded to f32
    let y = op("div(%a, %b)", "f32[5]", &[("a", &a), ("b", &b)]);
    assert_exact(
        &y,
        F32,
        &[5],
        &[INF, -INF, NAN, (1.0f32 / 3.0) as f64, -3.5],
    );
    // f32 rounding of the product: (1 + 2^-12)^2 = 1 + 2^-11 + 2^-24 -> 1 + 2^-11 (RNE)
    let c = f32t(&[1], &[1.0 + 2f64.powi(-12)]);
    let y = op("mul(%c, %c)", "f32[1]", &[("c", &c)]);
    assert_exact(&y, F32, &[1], &[1.0 + 2f64.powi(-11)]);
    // f32 add: 16777216 + 1 = 16777216 (tie to even)
    let d = f32t(&[1], &[16777216.0]);
    let e = f32t(&[1], &[1.0]);
    let y = op("add(%d, %e)", "f32[1]", &[("d", &d), ("e", &e)]);
    assert_exact(&y, F32, &[1], &[16777216.0]);
}

#[test]
fn integer_division_truncates_and_zero_fails() {
    let a = t(I32, &[7], &[-7.0, 7.0, -7.0, 7.0, 0.0, 5.0, -1.0]);
    let b = t(I32, &[7], &[2.0, 2.0, -2.0, -2.0, 3.0, 7.0, 3.0]);
    let y = op("div(%a, %b)", "i32[7]", &[("a", &a), ("b", &b)]);
    // C-style truncation toward zero (not NumPy's floor division)
    assert_exact(&y, I32, &[7], &[-3.0, 3.0, 3.0, -3.0, 0.0, 0.0, 0.0]);
    // i8: -128 / -1 = 128 wraps to -128
    let a = t(I8, &[2], &[-128.0, 100.0]);
    let b = t(I8, &[2], &[-1.0, -7.0]);
    let y = op("div(%a, %b)", "i8[2]", &[("a", &a), ("b", &b)]);
    assert_exact(&y, I8, &[2], &[-128.0, -14.0]);
    let z = t(I32, &[3], &[1.0, 0.0, 2.0]);
    let err = try_op(
        "div(%a, %z)",
        "i32[3]",
        &[("a", &t(I32, &[3], &[4.0, 5.0, 6.0])), ("z", &z)],
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            InterpError::Eval {
                error: interp::EvalError::DivisionByZero { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn integer_add_sub_mul_wrap() {
    let a = t(I8, &[4], &[100.0, -100.0, 127.0, -128.0]);
    let b = t(I8, &[4], &[100.0, -100.0, 1.0, 1.0]);
    // two's complement: 200 -> -56, -200 -> 56, 128 -> -128, -127
    assert_exact(
        &op("add(%a, %b)", "i8[4]", &[("a", &a), ("b", &b)]),
        I8,
        &[4],
        &[-56.0, 56.0, -128.0, -127.0],
    );
    // -128 - 1 = -129 -> 127; 100 - 100 = 0 ...
    assert_exact(
        &op("sub(%a, %b)", "i8[4]", &[("a", &a), ("b", &b)]),
        I8,
        &[4],
        &[0.0, 0.0, 126.0, 127.0],
    );
    // 100*100 = 10000 = 39*256 + 16 -> 16; (-100)(-100) -> 16; 127; -128
    assert_exact(
        &op("mul(%a, %b)", "i8[4]", &[("a", &a), ("b", &b)]),
        I8,
        &[4],
        &[16.0, 16.0, 127.0, -128.0],
    );
    let u = t(U8, &[3], &[200.0, 3.0, 255.0]);
    let v = t(U8, &[3], &[100.0, 5.0, 255.0]);
    // 300 -> 44; 3 - 5 = -2 -> 254; 255*255 = 65025 = 254*256 + 1 -> 1
    assert_exact(
        &op("add(%u, %v)", "u8[3]", &[("u", &u), ("v", &v)]),
        U8,
        &[3],
        &[44.0, 8.0, 254.0],
    );
    assert_exact(
        &op("sub(%u, %v)", "u8[3]", &[("u", &u), ("v", &v)]),
        U8,
        &[3],
        &[100.0, 254.0, 0.0],
    );
    assert_exact(
        &op("mul(%u, %v)", "u8[3]", &[("u", &u), ("v", &v)]),
        U8,
        &[3],
        &[32.0, 15.0, 1.0],
    );
    let i = t(I32, &[2], &[2147483647.0, -2147483648.0]);
    let one = t(I32, &[], &[1.0]);
    assert_exact(
        &op("add(%i, %one)", "i32[2]", &[("i", &i), ("one", &one)]),
        I32,
        &[2],
        &[-2147483648.0, -2147483647.0],
    );
    // 65536 * 65536 = 2^32 -> 0 in i32; 65536 * 32768 = 2^31 -> -2^31
    let p = t(I32, &[2], &[65536.0, 65536.0]);
    let q = t(I32, &[2], &[65536.0, 32768.0]);
    assert_exact(
        &op("mul(%p, %q)", "i32[2]", &[("p", &p), ("q", &q)]),
        I32,
        &[2],
        &[0.0, -2147483648.0],
    );
    // i64 stays exact within 2^53
    let l = t(I64, &[1], &[4503599627370496.0]);
    assert_exact(
        &op("add(%l, %l)", "i64[1]", &[("l", &l)]),
        I64,
        &[1],
        &[9007199254740992.0],
    );
}

#[test]
fn pow_broadcast() {
    let a = f32t(&[2, 3], &[2.0, 3.0, -8.0, 4.0, 0.5, 9.0]);
    let b = f32t(&[2, 1], &[0.5, 2.0]);
    let y = op("pow(%a, %b)", "f32[2, 3]", &[("a", &a), ("b", &b)]);
    // numpy: np.power(a, b) in f64, then f32: sqrt 2, sqrt 3, NaN (negative base,
    // fractional exponent), 16, 0.25, 81
    assert_ulps(
        &y,
        F32,
        &[2, 3],
        &[
            1.4142135381698608,
            1.7320507764816284,
            NAN,
            16.0,
            0.25,
            81.0,
        ],
        0.5,
    );
    let c = f64t(&[3], &[0.0, -2.0, 10.0]);
    let e = f64t(&[], &[-1.0]);
    let y = op("pow(%c, %e)", "f64[3]", &[("c", &c), ("e", &e)]);
    assert_close(&y, F64, &[3], &[INF, -0.5, 0.1], REL64, 0.0);
    let y = op("pow(%e, %c)", "f64[3]", &[("c", &c), ("e", &e)]);
    // (-1)^0 = 1, (-1)^-2 = 1, (-1)^10 = 1
    assert_exact(&y, F64, &[3], &[1.0, 1.0, 1.0]);
}

#[test]
fn max_min_propagate_nan() {
    let a = f32t(&[1, 5], &[1.0, NAN, 3.0, -0.5, INF]);
    let b = f32t(&[3, 1], &[2.0, NAN, -INF]);
    let y = op("max(%a, %b)", "f32[3, 5]", &[("a", &a), ("b", &b)]);
    #[rustfmt::skip]
    assert_exact(&y, F32, &[3, 5], &[
        2.0, NAN, 3.0, 2.0, INF,
        NAN, NAN, NAN, NAN, NAN,
        1.0, NAN, 3.0, -0.5, INF,
    ]);
    let y = op("min(%a, %b)", "f32[3, 5]", &[("a", &a), ("b", &b)]);
    #[rustfmt::skip]
    assert_exact(&y, F32, &[3, 5], &[
        1.0, NAN, 2.0, -0.5, 2.0,
        NAN, NAN, NAN, NAN, NAN,
        -INF, NAN, -INF, -INF, -INF,
    ]);
    let i = t(I32, &[3], &[-5.0, 7.0, 0.0]);
    let j = t(I32, &[], &[1.0]);
    assert_exact(
        &op("max(%i, %j)", "i32[3]", &[("i", &i), ("j", &j)]),
        I32,
        &[3],
        &[1.0, 7.0, 1.0],
    );
    assert_exact(
        &op("min(%i, %j)", "i32[3]", &[("i", &i), ("j", &j)]),
        I32,
        &[3],
        &[-5.0, 1.0, 0.0],
    );
}

#[test]
fn comparisons_with_broadcast_and_nan() {
    let a = f32t(&[2, 3], &[1.0, 2.0, NAN, 4.0, -0.0, 2.0]);
    let b = f32t(&[3], &[1.0, 3.0, NAN]);
    // by hand, per element (a, b): (1,1) (2,3) (NaN,NaN) (4,1) (-0,3) (2,NaN)
    let cases: [(&str, [f64; 6]); 6] = [
        ("eq", [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
        ("ne", [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
        ("lt", [0.0, 1.0, 0.0, 0.0, 1.0, 0.0]),
        ("le", [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]),
        ("gt", [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]),
        ("ge", [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]),
    ];
    for (name, exp) in cases {
        let y = op(
            &format!("{name}(%a, %b)"),
            "bool[2, 3]",
            &[("a", &a), ("b", &b)],
        );
        assert_exact(&y, Bool, &[2, 3], &exp);
    }
    // -0 == 0
    let z = f32t(&[1], &[0.0]);
    let nz = f32t(&[], &[-0.0]);
    let y = op("eq(%z, %nz)", "bool[1]", &[("z", &z), ("nz", &nz)]);
    assert_exact(&y, Bool, &[1], &[1.0]);
    // integers and bools
    let i = t(I64, &[1, 3], &[-1.0, 0.0, 5.0]);
    let j = t(I64, &[2, 1], &[0.0, 5.0]);
    let y = op("lt(%i, %j)", "bool[2, 3]", &[("i", &i), ("j", &j)]);
    assert_exact(&y, Bool, &[2, 3], &[1.0, 0.0, 0.0, 1.0, 1.0, 0.0]);
    let p = t(Bool, &[2], &[1.0, 0.0]);
    let q = t(Bool, &[2], &[1.0, 1.0]);
    let y = op("eq(%p, %q)", "bool[2]", &[("p", &p), ("q", &q)]);
    assert_exact(&y, Bool, &[2], &[1.0, 0.0]);
    let y = op("ne(%p, %q)", "bool[2]", &[("p", &p), ("q", &q)]);
    assert_exact(&y, Bool, &[2], &[0.0, 1.0]);
}

#[test]
fn and_or_broadcast() {
    let a = t(Bool, &[2, 1], &[1.0, 0.0]);
    let b = t(Bool, &[3], &[1.0, 0.0, 1.0]);
    let y = op("and(%a, %b)", "bool[2, 3]", &[("a", &a), ("b", &b)]);
    assert_exact(&y, Bool, &[2, 3], &[1.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
    let y = op("or(%a, %b)", "bool[2, 3]", &[("a", &a), ("b", &b)]);
    assert_exact(&y, Bool, &[2, 3], &[1.0, 1.0, 1.0, 1.0, 0.0, 1.0]);
    let s = t(Bool, &[], &[0.0]);
    let y = op("or(%s, %s)", "bool[]", &[("s", &s)]);
    assert_exact(&y, Bool, &[], &[0.0]);
}

#[test]
fn where_three_way_broadcast() {
    // cond [2, 1, 3], a [4, 1], b [] -> [2, 4, 3]
    let cv = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0];
    let cond = t(Bool, &[2, 1, 3], &cv);
    let a = f32t(&[4, 1], &[10.0, 20.0, 30.0, 40.0]);
    let b = f32t(&[], &[-1.0]);
    let y = op(
        "where(%c, %a, %b)",
        "f32[2, 4, 3]",
        &[("c", &cond), ("a", &a), ("b", &b)],
    );
    let mut exp = vec![];
    for i in 0..2 {
        for j in 0..4 {
            for k in 0..3 {
                exp.push(if cv[i * 3 + k] != 0.0 {
                    ((j + 1) * 10) as f64
                } else {
                    -1.0
                });
            }
        }
    }
    assert_exact(&y, F32, &[2, 4, 3], &exp);
    // integer branches, odd sizes
    let c = t(Bool, &[5], &[1.0, 1.0, 0.0, 0.0, 1.0]);
    let x = t(I8, &[5], &[1.0, 2.0, 3.0, 4.0, 5.0]);
    let z = t(I8, &[1], &[-9.0]);
    let y = op(
        "where(%c, %x, %z)",
        "i8[5]",
        &[("c", &c), ("x", &x), ("z", &z)],
    );
    assert_exact(&y, I8, &[5], &[1.0, 2.0, -9.0, -9.0, 5.0]);
}

// ---------------------------------------------------------------------------
// cast
// ---------------------------------------------------------------------------

fn cast(x: &Tensor, to: DType) -> Tensor {
    op(
        &format!("cast(%x) {{dtype = {}}}", to.name()),
        &ty(to, &x.shape),
        &[("x", x)],
    )
}

#[test]
fn cast_float_to_int_truncates_and_saturates() {
    let x = f32t(
        &[9],
        &[-3.7, 3.7, 200.0, -200.0, NAN, INF, -INF, -0.5, 127.9],
    );
    assert_exact(
        &cast(&x, I8),
        I8,
        &[9],
        &[-3.0, 3.0, 127.0, -128.0, 0.0, 127.0, -128.0, 0.0, 127.0],
    );
    let x = f64t(&[5], &[-1.5, 255.9, 256.0, 1e10, 0.99]);
    assert_exact(&cast(&x, U8), U8, &[5], &[0.0, 255.0, 255.0, 255.0, 0.0]);
    let x = f64t(&[4], &[3e9, -3e9, -2147483648.9, 2147483647.5]);
    assert_exact(
        &cast(&x, I32),
        I32,
        &[4],
        &[2147483647.0, -2147483648.0, -2147483648.0, 2147483647.0],
    );
    let x = t(BF16, &[3], &[-2.5, 1e30, 7.75]);
    assert_exact(
        &cast(&x, I64),
        I64,
        &[3],
        &[-2.0, 9223372036854775807.0, 7.0],
    );
}

#[test]
fn cast_int_to_int_wraps() {
    let x = t(
        I32,
        &[7],
        &[300.0, -129.0, 127.0, 128.0, 255.0, 256.0, -1.0],
    );
    assert_exact(
        &cast(&x, I8),
        I8,
        &[7],
        &[44.0, 127.0, 127.0, -128.0, -1.0, 0.0, -1.0],
    );
    assert_exact(
        &cast(&x, U8),
        U8,
        &[7],
        &[44.0, 127.0, 127.0, 128.0, 255.0, 0.0, 255.0],
    );
    let u = t(U8, &[3], &[255.0, 128.0, 7.0]);
    assert_exact(&cast(&u, I8), I8, &[3], &[-1.0, -128.0, 7.0]);
    assert_exact(&cast(&u, I64), I64, &[3], &[255.0, 128.0, 7.0]);
    let l = t(I64, &[2], &[4294967296.0 + 5.0, -4294967296.0 - 1.0]);
    assert_exact(&cast(&l, I32), I32, &[2], &[5.0, -1.0]);
    let b = t(Bool, &[2], &[1.0, 0.0]);
    assert_exact(&cast(&b, I32), I32, &[2], &[1.0, 0.0]);
}

#[test]
fn cast_to_bf16_f16_round_to_nearest_even() {
    let x = f64t(
        &[9],
        &[
            1.0 + 2f64.powi(-8),                  // tie -> 1 (even)
            1.0 + 3.0 * 2f64.powi(-8),            // tie -> 1 + 2^-6 (even)
            1.0 + 2f64.powi(-8) + 2f64.powi(-30), // above the tie -> up
            -(1.0 + 2f64.powi(-8) + 2f64.powi(-30)),
            0.1,
            3.14159,
            3.4e38, // beyond 2^128 - 2^119: inf
            -65504.0,
            1.0 / 3.0,
        ],
    );
    // by hand (exact rounding from f64, no detour through f32); the others
    // from ml_dtypes: 0.1 -> 0.10009765625, 3.14159 -> 3.140625,
    // -65504 -> -65536, 1/3 -> 0.333984375
    assert_exact(
        &cast(&x, BF16),
        BF16,
        &[9],
        &[
            1.0,
            1.015625,
            1.0078125,
            -1.0078125,
            0.10009765625,
            3.140625,
            INF,
            -65536.0,
            0.333984375,
        ],
    );
    let x = f64t(
        &[10],
        &[
            65504.0,
            65519.0,
            65520.0,
            -70000.0,
            1.0 + 2f64.powi(-11),
            1.0 + 3.0 * 2f64.powi(-11),
            1.0 + 2f64.powi(-11) + 2f64.powi(-40),
            2f64.powi(-25),
            1.5 * 2f64.powi(-24),
            0.1,
        ],
    );
    // numpy: x.astype(np.float16)
    assert_exact(
        &cast(&x, F16),
        F16,
        &[10],
        &[
            65504.0,
            65504.0,
            INF,
            -INF,
            1.0,
            1.001953125,
            1.0009765625,
            0.0,
            1.1920928955078125e-07,
            0.0999755859375,
        ],
    );
    // f32 from i64: 2^24 + 1 -> 2^24 (tie, even), 2^24 + 3 -> 2^24 + 4
    let l = t(I64, &[3], &[16777217.0, 16777219.0, -3.0]);
    assert_exact(&cast(&l, F32), F32, &[3], &[16777216.0, 16777220.0, -3.0]);
}

#[test]
fn cast_to_minifloats_saturates() {
    let x = f32t(
        &[12],
        &[
            0.3,
            17.0,
            19.0,
            440.0,
            464.0,
            500.0,
            -1000.0,
            INF,
            -INF,
            0.001,
            3.0 * 2f64.powi(-10),
            NAN,
        ],
    );
    // ml_dtypes float8_e4m3fn for the in-range values (0.3 -> 0.3125,
    // 17 -> 16 and 19 -> 20 are ties to even, 0.001 -> 2^-9, 3*2^-10 -> 2^-8);
    // beyond 448 (inf included) saturates to +-448; NaN stays NaN.
    assert_exact(
        &cast(&x, F8E4M3),
        F8E4M3,
        &[12],
        &[
            0.3125,
            16.0,
            20.0,
            448.0,
            448.0,
            448.0,
            -448.0,
            448.0,
            -448.0,
            0.001953125,
            0.00390625,
            NAN,
        ],
    );
    let x = f32t(&[5], &[0.3, 17.0, 100.0, 1e6, -INF]);
    // ml_dtypes float8_e5m2: 0.3125, 16, 96; saturating beyond 57344
    assert_exact(
        &cast(&x, F8E5M2),
        F8E5M2,
        &[5],
        &[0.3125, 16.0, 96.0, 57344.0, -57344.0],
    );
    let x = f32t(
        &[11],
        &[
            0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.5, -0.3, -2.6, 100.0,
        ],
    );
    // ml_dtypes float4_e2m1fn (ties to the even code), saturating at 6
    assert_exact(
        &cast(&x, F4E2M1),
        F4E2M1,
        &[11],
        &[0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, -0.5, -3.0, 6.0],
    );
    // back to f32 is exact
    let q = cast(&f32t(&[2], &[0.3, -1000.0]), F8E4M3);
    assert_exact(&cast(&q, F32), F32, &[2], &[0.3125, -448.0]);
}

#[test]
fn cast_to_bool_and_from_bool() {
    let x = f32t(&[5], &[0.0, -0.0, 0.5, -2.0, NAN]);
    // x != 0 (NaN != 0 is true, as NumPy's astype(bool))
    assert_exact(&cast(&x, Bool), Bool, &[5], &[0.0, 0.0, 1.0, 1.0, 1.0]);
    let i = t(I8, &[3], &[0.0, -1.0, 2.0]);
    assert_exact(&cast(&i, Bool), Bool, &[3], &[0.0, 1.0, 1.0]);
    let b = t(Bool, &[2], &[1.0, 0.0]);
    assert_exact(&cast(&b, F32), F32, &[2], &[1.0, 0.0]);
    // float to float: f64 -> f32 rounds
    let d = f64t(&[1], &[0.1]);
    assert_exact(&cast(&d, F32), F32, &[1], &[0.1f32 as f64]);
}

// ---------------------------------------------------------------------------
// clamp
// ---------------------------------------------------------------------------

#[test]
fn clamp_bounds() {
    let x = f32t(&[1, 7], &[-3.0, -1.0, 0.0, 1.0, 2.5, 4.0, NAN]);
    assert_exact(
        &unary("clamp(%x) {min = -1}", &x),
        F32,
        &[1, 7],
        &[-1.0, -1.0, 0.0, 1.0, 2.5, 4.0, NAN],
    );
    assert_exact(
        &unary("clamp(%x) {max = 2}", &x),
        F32,
        &[1, 7],
        &[-3.0, -1.0, 0.0, 1.0, 2.0, 2.0, NAN],
    );
    assert_exact(
        &unary("clamp(%x) {min = -0.5, max = 1.5}", &x),
        F32,
        &[1, 7],
        &[-0.5, -0.5, 0.0, 1.0, 1.5, 1.5, NAN],
    );
    assert_exact(&unary("clamp(%x)", &x), F32, &[1, 7], &x.data);
    // equal bounds
    assert_exact(
        &unary("clamp(%x) {min = 2, max = 2}", &x),
        F32,
        &[1, 7],
        &[2.0, 2.0, 2.0, 2.0, 2.0, 2.0, NAN],
    );
}

#[test]
fn size1_axes_and_odd_sizes_for_the_remaining_elementwise_ops() {
    // sign, cast, div, comparisons with a size-1 axis; by hand
    let x = f32t(&[3, 1], &[-0.5, 0.0, 7.0]);
    assert_exact(&unary("sign(%x)", &x), F32, &[3, 1], &[-1.0, 0.0, 1.0]);
    assert_exact(&cast(&x, I32), I32, &[3, 1], &[0.0, 0.0, 7.0]);
    assert_exact(&cast(&x, Bool), Bool, &[3, 1], &[1.0, 0.0, 1.0]);
    let a = f64t(&[1, 3], &[1.0, -2.0, 9.0]);
    let b = f64t(&[1, 1], &[4.0]);
    let y = op("div(%a, %b)", "f64[1, 3]", &[("a", &a), ("b", &b)]);
    assert_exact(&y, F64, &[1, 3], &[0.25, -0.5, 2.25]);
    let i = t(I64, &[1, 3], &[-9.0, 9.0, 1.0]);
    let j = t(I64, &[1, 1], &[-4.0]);
    let y = op("div(%i, %j)", "i64[1, 3]", &[("i", &i), ("j", &j)]);
    assert_exact(&y, I64, &[1, 3], &[2.0, -2.0, 0.0]);
    let p = f32t(&[2, 3], &[1.0, 5.0, -1.0, 4.0, 4.0, 4.0]);
    let q = f32t(&[1, 3], &[1.0, 4.0, 0.0]);
    let cases: [(&str, [f64; 6]); 6] = [
        ("eq", [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
        ("ne", [0.0, 1.0, 1.0, 1.0, 0.0, 1.0]),
        ("lt", [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]),
        ("le", [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]),
        ("gt", [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]),
        ("ge", [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]),
    ];
    for (name, exp) in cases {
        let y = op(
            &format!("{name}(%p, %q)"),
            "bool[2, 3]",
            &[("p", &p), ("q", &q)],
        );
        assert_exact(&y, Bool, &[2, 3], &exp);
    }
}

#[test]
fn declared_types_are_checked_before_running() {
    // a wrong declared shape, a wrong declared dtype, a non-broadcasting pair
    let a = f32t(&[2, 3], &[0.0; 6]);
    let b = f32t(&[3], &[0.0; 3]);
    for (call, result) in [
        ("add(%a, %b)", "f32[2, 4]"),
        ("add(%a, %b)", "f64[2, 3]"),
        ("eq(%a, %b)", "f32[2, 3]"),
        ("matmul(%a, %b)", "f32[2, 3]"),
    ] {
        let err = try_op(call, result, &[("a", &a), ("b", &b)]).unwrap_err();
        assert!(matches!(err, InterpError::Verify(_)), "{call}: {err}");
    }
    let c = f32t(&[2], &[0.0; 2]);
    let err = try_op("add(%a, %c)", "f32[2, 3]", &[("a", &a), ("c", &c)]).unwrap_err();
    assert!(matches!(err, InterpError::Verify(_)), "{err}");
}

#[test]
fn i64_max_is_kept_by_value_preserving_ops() {
    // i64::MAX is held as its nearest f64, 2^63 (as numeric::decode gives it);
    // rounding to i64 must keep it, not wrap it to i64::MIN.
    let max = 9223372036854775807i64 as f64;
    let src = "graph t {
  input %x: i64[2]
  %c: i64[2] = constant() {value = [9223372036854775807, -9223372036854775807]}
  %r: i64[2] = relu(%c)
  %z: i64[] = constant() {value = 0}
  %a: i64[2] = add(%x, %z)
  %m: i64[] = reduce_max(%c) {axes = [0]}
  output c = %c
  output r = %r
  output a = %a
  output m = %m
}";
    let x = t(I64, &[2], &[max, -max]);
    let o = run_all(src, &[("x", x)]);
    assert_exact(&o[0], I64, &[2], &[max, -max]);
    assert_exact(&o[1], I64, &[2], &[max, 0.0]);
    assert_exact(&o[2], I64, &[2], &[max, -max]);
    assert_exact(&o[3], I64, &[], &[max]);
}
