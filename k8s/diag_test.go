package k8s_test

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/trireme-go/trireme/testenv"
)

// diagnose describes, for the report of a wrong cell, the state a lost
// packet could hide in: both pods' sockets and neighbours, each node's
// bridge forwarding table, link counters (TAP drops) and the daemons'
// counters. It reads state only.
func (u *liveUniverse) diagnose(from, to string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var b strings.Builder
	run := func(what string, f func() (string, error)) {
		out, err := f()
		if err != nil {
			out += " (" + err.Error() + ")"
		}
		fmt.Fprintf(&b, "--- %s\n%s\n", what, strings.TrimSpace(out))
	}
	nodes := map[*testenv.Node]bool{}
	for _, id := range []string{from, to} {
		p := u.pus[id]
		if p == nil {
			continue
		}
		nodes[p.Node] = true
		run(id+" ("+p.Addr.String()+", node "+p.Node.Name+"): ss", func() (string, error) { return p.Run(ctx, "ss", "-tanoi") })
		run(id+": TCP counters", func() (string, error) { return p.Run(ctx, "nstat", "-asz", "Tcp*") })
		run(id+": neighbours", func() (string, error) { return p.Run(ctx, "ip", "neigh", "show") })
		run(id+": links", func() (string, error) { return p.Run(ctx, "ip", "-s", "link", "show") })
		run(id+": host veth "+p.Link.HostName, func() (string, error) {
			return p.Node.Run(ctx, "ip", "-s", "-d", "link", "show", p.Link.HostName)
		})
	}
	for n := range nodes {
		run(n.Name+": bridge fdb", func() (string, error) { return n.Run(ctx, "bridge", "fdb", "show", "br", n.Bridge) })
		run(n.Name+": links", func() (string, error) { return n.Run(ctx, "ip", "-s", "link", "show") })
		run(n.Name+": nftables", func() (string, error) { return n.Run(ctx, "nft", "list", "ruleset") })
	}
	for i, d := range u.ds {
		if st, err := d.Client().Stats(); err == nil {
			fmt.Fprintf(&b, "--- daemon %d: counters %v, drops %v\n", i, st.Counters, st.Drops)
		}
	}
	return b.String()
}
