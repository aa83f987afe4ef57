import matplotlib.pyplot as plt
import numpy as np

years = [2019, 2020, 2021, 2022, 2023]
ev_sales = [2.1, 3.1, 6.6, 10.5, 14.0]
battery_cost = [183, 160, 150, 161, 139]
rng = np.random.default_rng(8)
range_km = rng.normal(420, 70, 50)
price_k = 25 + 0.08 * range_km + rng.normal(0, 6, 50)

fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4.2))
ax1.bar(years, ev_sales, color="#2d6a4f")
ax1.set_title("Global EV Sales (millions)")
ax1.set_xticks(years)

ax2.plot(years, battery_cost, marker="D", color="#b5179e")
ax2.set_title("Battery Pack Price (USD/kWh)")
ax2.set_xticks(years)
ax2.set_ylim(100, 200)

ax3.scatter(range_km, price_k, color="#4361ee", s=25)
ax3.set_title("Range vs Price of 2023 Models")
ax3.set_xlabel("WLTP range (km)")
ax3.set_ylabel("Price (thousand USD)")

plt.tight_layout()
