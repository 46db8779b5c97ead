package broker

// memoryNote says, for a DEGRADED reason, what the broker can still do
// without Key Vault: serve the keys it holds, or nothing at all when it holds
// none (a cold start during an outage, or an offline command).
func (b *Broker) memoryNote() string {
	if b.cache.Len() == 0 {
		return "no key is held in memory yet, so key requests fail with UNAVAILABLE until Key Vault answers (check the network path to the vault and the broker's log)"
	}
	return "serving keys held in memory"
}
