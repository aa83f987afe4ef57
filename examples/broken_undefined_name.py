import matplotlib.pyplot as plt

quarters = ["Q1", "Q2", "Q3", "Q4"]
revenue = [12.1, 14.8, 13.2, 17.5]

fig, ax = plt.subplots(figsize=(7, 4))
ax.bar(quarters, revenue, color="#3a86ff")
# the model forgot to define `targets` (a typical chart-to-code mistake)
ax.plot(quarters, targets, color="#ff006e", marker="o", label="Target")
ax.set_title("Quarterly Revenue vs Target")
ax.legend()
plt.savefig("output.png", dpi=100)
