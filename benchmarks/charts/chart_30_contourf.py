import matplotlib.pyplot as plt
import numpy as np

lon = np.linspace(-10, 30, 160)
lat = np.linspace(35, 70, 140)
LON, LAT = np.meshgrid(lon, lat)
temperature = (28 - 0.55 * (LAT - 35) + 4 * np.sin(LON / 6) * np.cos(LAT / 8)
               + 3 * np.exp(-((LON - 15) ** 2 + (LAT - 45) ** 2) / 40))

fig, ax = plt.subplots(figsize=(9, 6.5))
cf = ax.contourf(LON, LAT, temperature, levels=16, cmap="coolwarm")
cs = ax.contour(LON, LAT, temperature, levels=8, colors="k", linewidths=0.5)
ax.clabel(cs, inline=True, fontsize=8, fmt="%.0f°")
fig.colorbar(cf, ax=ax, label="Mean July temperature (°C)")
ax.set_xlabel("Longitude (°E)")
ax.set_ylabel("Latitude (°N)")
ax.set_title("Modelled Mean July Temperature over Europe")
plt.tight_layout()
plt.show()
