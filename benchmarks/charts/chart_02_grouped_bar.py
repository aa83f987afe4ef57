import matplotlib.pyplot as plt
import numpy as np

countries = ["USA", "China", "Germany", "Japan", "India", "Brazil"]
gdp_2021 = [5.9, 8.4, 2.6, 2.1, 9.1, 4.8]
gdp_2022 = [1.9, 3.0, 1.8, 1.0, 7.2, 3.0]
gdp_2023 = [2.5, 5.2, -0.3, 1.9, 7.8, 2.9]

x = np.arange(len(countries))
width = 0.26

fig, ax = plt.subplots(figsize=(10, 5.5))
ax.bar(x - width, gdp_2021, width, label="2021", color="#1f77b4")
ax.bar(x, gdp_2022, width, label="2022", color="#ff7f0e")
ax.bar(x + width, gdp_2023, width, label="2023", color="#2ca02c")

ax.axhline(0, color="black", linewidth=0.8)
ax.set_xticks(x)
ax.set_xticklabels(countries)
ax.set_ylabel("Real GDP growth (%)")
ax.set_title("Annual GDP Growth by Country, 2021-2023")
ax.legend(title="Year", frameon=False)
ax.grid(axis="y", alpha=0.3)

plt.tight_layout()
plt.show()
