import sys, numpy as np
a = np.fromfile(sys.argv[1], dtype=np.float32); b = np.fromfile(sys.argv[2], dtype=np.float32)
assert a.shape == b.shape and a.size > 0, (a.shape, b.shape)
d = np.abs(a.astype(np.float64) - b)
rel = np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(a.astype(np.float64))
print(f"n={a.size} bit_identical={a.tobytes()==b.tobytes()} max_abs={d.max():.3g} rel_l2={rel:.3g} max|a|={np.abs(a).max():.3g} differing={int((a!=b).sum())}")
