import matplotlib.pyplot as plt

months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
london = [5.2, 5.3, 7.6, 9.9, 13.3, 16.5, 18.7, 18.5, 15.7, 12.0, 8.0, 5.5]
madrid = [6.3, 7.9, 11.2, 12.9, 16.7, 22.2, 25.6, 25.1, 20.9, 15.1, 9.9, 6.9]
oslo = [-2.9, -3.0, 0.1, 4.5, 10.8, 15.2, 16.4, 15.2, 10.8, 5.5, 0.6, -2.3]

plt.figure(figsize=(10, 5))
plt.plot(months, london, marker="o", color="#264653", linewidth=2, label="London")
plt.plot(months, madrid, marker="s", color="#e76f51", linewidth=2, label="Madrid")
plt.plot(months, oslo, marker="^", color="#2a9d8f", linewidth=2, linestyle="--", label="Oslo")

plt.axhline(0, color="gray", linewidth=0.8)
plt.title("Average Monthly Temperature")
plt.xlabel("Month")
plt.ylabel("Temperature (°C)")
plt.legend(loc="upper left")
plt.grid(True, alpha=0.3)
plt.tight_layout()
plt.savefig("output.png", dpi=200)
