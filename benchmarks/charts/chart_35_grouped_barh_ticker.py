import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np

sectors = ["Technology", "Healthcare", "Financials", "Energy", "Consumer", "Industrials", "Utilities"]
ret_2022 = np.array([-0.28, -0.02, -0.11, 0.59, -0.37, -0.05, 0.01])
ret_2023 = np.array([0.58, 0.02, 0.12, -0.01, 0.42, 0.18, -0.07])

y = np.arange(len(sectors))
h = 0.38
fig, ax = plt.subplots(figsize=(9, 6))
ax.barh(y + h / 2, ret_2022, h, color="#adb5bd", label="2022")
ax.barh(y - h / 2, ret_2023, h, color="#0466c8", label="2023")
ax.axvline(0, color="black", linewidth=0.8)
ax.set_yticks(y)
ax.set_yticklabels(sectors)
ax.xaxis.set_major_formatter(mticker.PercentFormatter(xmax=1.0, decimals=0))
ax.xaxis.set_major_locator(mticker.MultipleLocator(0.2))
ax.set_xlabel("Total return")
ax.set_title("S&P 500 Sector Returns")
ax.legend(loc="lower right")
ax.invert_yaxis()
plt.tight_layout()
plt.show()
