import matplotlib.pyplot as plt
import numpy as np

rng = np.random.default_rng(4)
n = 20000
distance = rng.gamma(2.2, 3.0, n)
fare = 3.0 + 2.4 * distance + rng.normal(0, 3, n) + rng.exponential(2, n)

fig, ax = plt.subplots(figsize=(8, 6))
hb = ax.hexbin(distance, fare, gridsize=45, cmap="inferno", mincnt=1, bins="log")
cb = fig.colorbar(hb, ax=ax)
cb.set_label("Trips (log count)")
ax.set_xlim(0, 25)
ax.set_ylim(0, 70)
ax.set_xlabel("Trip distance (km)")
ax.set_ylabel("Fare (USD)")
ax.set_title("Taxi Fares vs Distance, 20,000 Trips")
plt.savefig("output.png", dpi=100)
