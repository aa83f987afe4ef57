import matplotlib.pyplot as plt
import numpy as np

rng = np.random.default_rng(42)
weeks = np.arange(1, 53)
history = 120 + 15 * np.sin(weeks[:40] / 6) + rng.normal(0, 4, 40)
forecast_x = weeks[39:]
trend = history[-1] + 0.8 * np.arange(forecast_x.size)
spread = 3 + 1.2 * np.arange(forecast_x.size)

fig, ax = plt.subplots(figsize=(10, 5))
ax.plot(weeks[:40], history, color="#023e8a", linewidth=2, label="Observed demand")
ax.plot(forecast_x, trend, color="#e85d04", linewidth=2, linestyle="--", label="Forecast")
ax.fill_between(forecast_x, trend - 1.96 * spread, trend + 1.96 * spread, color="#f48c06", alpha=0.2,
                label="95% interval")
ax.fill_between(forecast_x, trend - spread, trend + spread, color="#f48c06", alpha=0.35, label="68% interval")
ax.axvline(40, color="gray", linestyle=":")
ax.text(40.5, 160, "forecast start", color="gray")

ax.set_xlabel("Week of year")
ax.set_ylabel("Units sold (thousands)")
ax.set_title("Weekly Demand Forecast, 2024")
ax.legend(loc="lower left")
plt.tight_layout()
plt.savefig("output.png", dpi=150)
