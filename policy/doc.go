// Package policy is trireme's network policy: the model of a policy file,
// its parser, and the compiled Engine that decides connections. It knows
// nothing of packets, tokens or the daemon; the dataplane asks it, per
// connection, what a PU's rules say about a peer.
//
// A policy file goes through four stages (docs/policy.md is the reference
// for the file format and the semantics):
//
//	set, err := policy.Load("policy.yaml") // or Parse(name, data): a Set, or every error as file:line:col
//	eng, err := policy.Compile(set)        // an immutable Engine; a policy update compiles a new one
//	pu := eng.ForPU(tags)                  // once per PU: its rules, indexed
//	d := pu.Ingress(peer, addr, ipproto.TCP, 443) // per connection, allocation-free
//
// The enforcers ask the two halves separately: the server's enforcer its
// PU's Ingress about the client, the client's enforcer its PU's Egress about
// the server, each with the peer's Identity (from its token; nil for a peer
// without one) and address. Engine.IsTarget and Engine.IsExcluded say which
// peers must present a token and which bypass every check.
//
// Engine.Decide puts both halves together the way the enforcers do and
// explains the result: for a Conn between two Endpoints (Engine.PU, Host)
// it returns each side's Basis (identity, address, missing token, excluded
// peer, no enforcer), its Decision (action, deciding and observed rule,
// reason) and the side that refuses first. `trireme policy explain`, `trireme
// k8s reach` and the offline demo print it; the dataplane/replay tests hold
// it to the enforcers.
//
// Files:
//
//   - model.go: the Set a file parses into (policies, rules, peers, ports,
//     actions, observe modes, networks).
//   - parse.go: Load and Parse (YAML, every error with its position), ports
//     and CIDRs.
//   - selector.go: label selectors over tags (Kubernetes syntax, with
//     reserved "@" keys and any tag value).
//   - symbols.go: the symbol table that interns tag keys and values, so that
//     a decision compares integers (the tags and the interned Identity are
//     package identity's).
//   - engine.go: Compile, Engine, ForPU, PUPolicy and one half's decision.
//   - index.go, cidr.go, ports.go: the indexes a decision walks (selector
//     anchors, a prefix table, rules by port).
//   - decide.go: Engine.Decide, one connection between two endpoints.
package policy
