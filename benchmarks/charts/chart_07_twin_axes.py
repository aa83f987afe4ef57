import matplotlib.pyplot as plt
import numpy as np

years = np.arange(2015, 2024)
revenue = np.array([12.4, 14.1, 15.9, 18.2, 19.0, 16.3, 21.7, 25.4, 27.9])
margin = np.array([8.1, 9.4, 10.2, 11.5, 10.8, 6.2, 12.9, 14.3, 15.1])

fig, ax1 = plt.subplots(figsize=(9, 5))
ax1.bar(years, revenue, color="#90be6d", alpha=0.85, label="Revenue")
ax1.set_xlabel("Fiscal year")
ax1.set_ylabel("Revenue (billion USD)", color="#43aa8b")
ax1.tick_params(axis="y", labelcolor="#43aa8b")

ax2 = ax1.twinx()
ax2.plot(years, margin, color="#f94144", marker="o", linewidth=2.5, label="Operating margin")
ax2.set_ylabel("Operating margin (%)", color="#f94144")
ax2.tick_params(axis="y", labelcolor="#f94144")
ax2.set_ylim(0, 20)

lines = ax1.get_legend_handles_labels()
lines2 = ax2.get_legend_handles_labels()
ax1.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left")
ax1.set_title("Revenue and Operating Margin, FY2015-FY2023")
fig.tight_layout()
plt.show()
