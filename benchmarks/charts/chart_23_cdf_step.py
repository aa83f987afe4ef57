import matplotlib.pyplot as plt
import numpy as np

rng = np.random.default_rng(99)
samples = {
    "HTTP/1.1": rng.lognormal(5.2, 0.5, 1000),
    "HTTP/2": rng.lognormal(4.9, 0.45, 1000),
    "HTTP/3": rng.lognormal(4.7, 0.4, 1000),
}
colors = {"HTTP/1.1": "#6d597a", "HTTP/2": "#b56576", "HTTP/3": "#eaac8b"}

fig, ax = plt.subplots(figsize=(8, 5))
for name, data in samples.items():
    xs = np.sort(data)
    ys = np.arange(1, xs.size + 1) / xs.size
    ax.step(xs, ys, where="post", label=name, color=colors[name], linewidth=2)
    p95 = np.percentile(data, 95)
    ax.axvline(p95, color=colors[name], linestyle=":", linewidth=1)

ax.set_xlabel("Page load time (ms)")
ax.set_ylabel("Cumulative fraction of requests")
ax.set_title("Page Load Time CDF by Protocol (dotted: p95)")
ax.set_xlim(0, 600)
ax.legend(loc="lower right")
ax.grid(alpha=0.3)
