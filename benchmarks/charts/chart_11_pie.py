import matplotlib.pyplot as plt

vendors = ["Apple", "Samsung", "Xiaomi", "OPPO", "vivo", "Others"]
share = [20.1, 19.4, 12.5, 8.8, 8.1, 31.1]
colors = ["#A2AAAD", "#1428A0", "#FF6900", "#1BA784", "#415FFF", "#D9D9D9"]
explode = [0.06, 0, 0, 0, 0, 0]

fig, ax = plt.subplots(figsize=(7, 7))
wedges, texts, autotexts = ax.pie(share, labels=vendors, colors=colors, explode=explode, autopct="%1.1f%%",
                                  startangle=90, pctdistance=0.78, shadow=False,
                                  wedgeprops={"edgecolor": "white", "linewidth": 1.5})
for t in autotexts:
    t.set_color("white")
    t.set_fontweight("bold")
autotexts[-1].set_color("black")
ax.set_title("Global Smartphone Shipments Market Share, 2023", fontsize=13)
ax.axis("equal")
plt.savefig("output.png", dpi=120)
