import matplotlib.pyplot as plt
import numpy as np

rng = np.random.default_rng(3)
n = 60
gdp_per_capita = 10 ** rng.uniform(3, 5, n)
life_expectancy = 50 + 7 * np.log10(gdp_per_capita) + rng.normal(0, 2.5, n)
population = rng.uniform(2, 300, n)
co2 = np.log10(gdp_per_capita) * 3 + rng.normal(0, 1.5, n)

fig, ax = plt.subplots(figsize=(9, 6))
sc = ax.scatter(gdp_per_capita, life_expectancy, s=population * 3, c=co2, cmap="viridis", alpha=0.75,
                edgecolors="white", linewidths=0.6)
cbar = fig.colorbar(sc, ax=ax)
cbar.set_label("CO$_2$ emissions per capita (t)")

ax.set_xscale("log")
ax.set_xlabel("GDP per capita (USD, log scale)")
ax.set_ylabel("Life expectancy (years)")
ax.set_title("Wealth and Health of Nations, 2022")
ax.grid(True, alpha=0.3)
plt.tight_layout()
plt.show()
