"""The Dormand & Prince (1980) 5(4) Runge-Kutta tableau, shared by the adaptive ODE solvers."""

__all__ = ["DP_A", "DP_B", "DP_C", "DP_E"]

# Dormand & Prince (1980) 5(4) tableau (first same as last): nodes, stages, 5th-order weights, 5th minus 4th-order weights.
DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
DP_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
DP_E = tuple(
    b - b4
    for b, b4 in zip(
        DP_B, (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
    )
)
