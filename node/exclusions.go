package node

import "net/netip"

// updatePolicyExcluded brings the kernel's excluded sets in line with a new
// policy's excluded networks (runtime exclusions stay).
func (d *Daemon) updatePolicyExcluded(next []netip.Prefix) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range diffPrefixes(d.policyExcl, next) {
		if !containsPrefix(d.excluded, p) {
			if err := d.steer.RemoveExcluded(p); err != nil {
				d.log.Warn("removing excluded network", "prefix", p, "err", err)
			}
		}
	}
	for _, p := range diffPrefixes(next, d.policyExcl) {
		if !containsPrefix(d.excluded, p) {
			if err := d.steer.AddExcluded(p); err != nil {
				d.log.Warn("adding excluded network", "prefix", p, "err", err)
			}
		}
	}
	d.policyExcl = next
}

// diffPrefixes returns the prefixes of a that are not in b.
func diffPrefixes(a, b []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range a {
		if !containsPrefix(b, p) {
			out = append(out, p)
		}
	}
	return out
}

func containsPrefix(ps []netip.Prefix, p netip.Prefix) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

// containsAddrOf reports whether a prefix of ps contains a.
func containsAddrOf(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a.Unmap()) {
			return true
		}
	}
	return false
}
