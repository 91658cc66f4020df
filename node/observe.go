package node

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"strconv"
)

// Observe configures what the daemon shows of its flows: the ring of
// recent records `trireme flows` and the web page read, and the web page's
// optional TCP listener (docs/observability.md).
type Observe struct {
	// FlowRing is how many flow records the daemon keeps in memory
	// (DefaultFlowRing when 0).
	FlowRing int `yaml:"flowRing,omitempty"`
	// Web serves the page on a TCP address too (it is always on the
	// control socket): Listen is host:port, TokenFile holds the token a
	// browser must present (at least 16 bytes; ?token= once, then a
	// cookie).
	Web Web `yaml:"web,omitempty"`
}

// Web is the web page's TCP listener.
type Web struct {
	Listen    string `yaml:"listen,omitempty"`
	TokenFile string `yaml:"tokenFile,omitempty"`
}

// maxFlowRing bounds the ring (~512 MiB at most).
const maxFlowRing = 1 << 20

// minWebToken is the shortest token the TCP listener accepts.
const minWebToken = 16

func (o *Observe) validate(bad func(field, format string, args ...any)) {
	if o.FlowRing < 0 || o.FlowRing > maxFlowRing {
		bad("observe.flowRing", "%d: want 0 (the default, %d) to %d records", o.FlowRing, DefaultFlowRing, maxFlowRing)
	}
	w := o.Web
	if w.Listen == "" {
		if w.TokenFile != "" {
			bad("observe.web.tokenFile", "set without observe.web.listen")
		}
		return
	}
	host, port, err := net.SplitHostPort(w.Listen)
	if p, perr := strconv.Atoi(port); err != nil || perr != nil || p < 0 || p > 65535 {
		bad("observe.web.listen", "%q: want host:port", w.Listen)
	} else if host != "" && net.ParseIP(host) == nil && host != "localhost" {
		bad("observe.web.listen", "%q: want an IP address or localhost as host", w.Listen)
	}
	if w.TokenFile == "" {
		bad("observe.web.tokenFile", "missing: the TCP listener needs a token")
		return
	}
	if _, err := readWebToken(w.TokenFile); err != nil {
		bad("observe.web.tokenFile", "%v", err)
	}
}

// readWebToken reads the web page's token (surrounding blanks trimmed).
func readWebToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	tok := string(bytes.TrimSpace(b))
	if len(tok) < minWebToken {
		return "", fmt.Errorf("%s: the token must have at least %d characters", path, minWebToken)
	}
	return tok, nil
}
