import matplotlib.pyplot as plt
import numpy as np

years = np.arange(2000, 2024)
exports = np.array([210, 215, 228, 240, 262, 288, 310, 335, 352, 298, 340, 372, 380, 391, 402, 388, 380,
                    405, 431, 428, 395, 462, 520, 505])
imports = np.array([230, 232, 240, 255, 280, 300, 318, 336, 348, 290, 330, 360, 376, 392, 410, 400, 398,
                    420, 442, 437, 412, 488, 560, 530])

fig, ax = plt.subplots(figsize=(10, 5))
ax.plot(years, exports, color="#2b9348", linewidth=2, label="Exports")
ax.plot(years, imports, color="#d00000", linewidth=2, label="Imports")
ax.fill_between(years, exports, imports, where=exports >= imports, color="#2b9348", alpha=0.3,
                interpolate=True, label="Surplus")
ax.fill_between(years, exports, imports, where=exports < imports, color="#d00000", alpha=0.3,
                interpolate=True, label="Deficit")
ax.set_xlabel("Year")
ax.set_ylabel("Billion EUR")
ax.set_title("Trade Balance of Goods, 2000-2023")
ax.legend(loc="upper left", ncol=2)
ax.margins(x=0)
plt.show()
