"""netns - a multi-host mlustre cluster on one machine, hosts as network namespaces
(scripts/netns-cluster): plan.py decides, driver.py runs, nfqdelay.py delays packets
without netem, soak.py is the soak across hosts."""
