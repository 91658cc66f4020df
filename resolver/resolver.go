// Package resolver gives the daemon its policy: a File holds the compiled
// policy in force (Current), reloads it when its file changes and pushes
// each new one (Updates). The daemon swaps the *policy.Engine atomically and
// re-resolves its PUs on every update.
package resolver

import "github.com/trireme-go/trireme/policy"

// latest is a one-slot channel that keeps only the newest value. It has one
// producer (the resolver), so drain-then-send cannot lose the newest value.
type latest struct{ ch chan *policy.Engine }

func newLatest() latest { return latest{ch: make(chan *policy.Engine, 1)} }

func (l latest) push(e *policy.Engine) {
	for {
		select {
		case l.ch <- e:
			return
		default:
		}
		select {
		case <-l.ch: // drop the stale value the reader has not taken
		default:
		}
	}
}
