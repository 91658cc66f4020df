package agent

import "net/netip"

// For the external tests (package agent_test, which use testenv: it
// imports the node, which imports this package).

var NewNetnsFinder = newNetnsFinder

func (f *netnsFinder) Find(ips []netip.Addr) (string, error) { return f.find(ips) }
