import matplotlib.pyplot as plt
import numpy as np

n = np.arange(0, 40)
signal = np.sin(2 * np.pi * n / 16) * np.exp(-n / 25)
rng = np.random.default_rng(48)
noisy = signal + rng.normal(0, 0.08, n.size)

fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
markerline, stemlines, baseline = ax1.stem(n, signal)
plt.setp(markerline, color="#7b2cbf", markersize=5)
plt.setp(stemlines, color="#9d4edd")
plt.setp(baseline, color="gray", linewidth=0.8)
ax1.set_title("Clean Sampled Signal x[n]")
ax1.set_ylabel("Amplitude")

markerline, stemlines, baseline = ax2.stem(n, noisy, linefmt="C1-", markerfmt="C1s", basefmt="k-")
ax2.set_title("With Additive Gaussian Noise (σ = 0.08)")
ax2.set_xlabel("Sample index n")
ax2.set_ylabel("Amplitude")
fig.tight_layout()
plt.show()
