import matplotlib.pyplot as plt
import numpy as np

rng = np.random.default_rng(2024)
days = np.arange(250)
price = 150 + np.cumsum(rng.normal(0.15, 2.0, days.size))

fig, ax = plt.subplots(figsize=(11, 5))
ax.plot(days, price, color="#1d3557", linewidth=1.4)

peak = int(np.argmax(price))
low = int(np.argmin(price))
ax.annotate(f"52-week high\n${price[peak]:.0f}", xy=(peak, price[peak]), xytext=(peak - 60, price[peak] + 12),
            arrowprops={"arrowstyle": "->", "color": "#2a9d8f", "lw": 1.5}, color="#2a9d8f")
ax.annotate(f"52-week low\n${price[low]:.0f}", xy=(low, price[low]), xytext=(low + 25, price[low] - 18),
            arrowprops={"arrowstyle": "->", "color": "#e63946", "lw": 1.5}, color="#e63946")
ax.annotate("Earnings call", xy=(120, price[120]), xytext=(95, price.max() + 20),
            arrowprops={"arrowstyle": "fancy", "color": "#adb5bd"}, ha="center")

ax.set_xlim(0, 250)
ax.set_ylim(price.min() - 30, price.max() + 35)
ax.set_xlabel("Trading day")
ax.set_ylabel("Close price (USD)")
ax.set_title("ACME Corp. Share Price, 2023")
ax.grid(alpha=0.3)
plt.tight_layout()
plt.show()
