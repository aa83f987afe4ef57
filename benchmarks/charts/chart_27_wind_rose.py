import matplotlib.pyplot as plt
import numpy as np

directions = ["N", "NNE", "NE", "ENE", "E", "ESE", "SE", "SSE",
              "S", "SSW", "SW", "WSW", "W", "WNW", "NW", "NNW"]
frequency = np.array([6.1, 4.2, 3.8, 3.0, 2.9, 3.3, 4.8, 6.5, 8.2, 9.7, 11.4, 10.1, 8.8, 6.9, 5.6, 4.7])
theta = np.linspace(0, 2 * np.pi, len(directions), endpoint=False)

fig = plt.figure(figsize=(7, 7))
ax = fig.add_subplot(projection="polar")
bars = ax.bar(theta, frequency, width=2 * np.pi / len(directions) * 0.9, bottom=0.5,
              color=plt.cm.plasma(frequency / frequency.max()), edgecolor="white")
ax.set_theta_zero_location("N")
ax.set_theta_direction(-1)
ax.set_xticks(theta)
ax.set_xticklabels(directions)
ax.set_rlabel_position(100)
ax.set_title("Wind Direction Frequency (%), Schiphol 2023", pad=20)
plt.show()
