import matplotlib.pyplot as plt
import numpy as np

years = np.arange(1990, 2024)
rng = np.random.default_rng(1990)
unemployment = 5.5 + np.cumsum(rng.normal(0, 0.35, years.size))
unemployment = np.clip(unemployment, 3.5, 10)
unemployment[18:21] += [1.5, 3.2, 2.4]
unemployment[30:32] += [2.8, 1.0]

recessions = [(1990.5, 1991.2), (2001.2, 2001.9), (2007.9, 2009.5), (2020.1, 2020.4)]

fig, ax = plt.subplots(figsize=(11, 4.8))
ax.plot(years, unemployment, color="#283618", linewidth=2)
for i, (start, end) in enumerate(recessions):
    ax.axvspan(start, end, color="#bc6c25", alpha=0.25, label="Recession" if i == 0 else None)
ax.set_xlim(1990, 2023)
ax.set_ylabel("Unemployment rate (%)")
ax.set_title("Unemployment Rate and Recessions, 1990-2023")
ax.legend(loc="upper left")
ax.grid(alpha=0.3)
plt.tight_layout()
plt.savefig("output.png", dpi=100)
