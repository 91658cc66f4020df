package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/trireme-go/trireme/ipproto"
	"gopkg.in/yaml.v3"
)

// MaxFileSize bounds a policy file; larger files are refused unread.
const MaxFileSize = 16 << 20

// Error is one problem in a policy file.
type Error struct {
	Pos   Position
	Field string // path of the field, e.g. policies[1].ingress[0].ports[2]
	Msg   string
}

func (e *Error) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("%s: %s", e.Pos, e.Msg)
	}
	return fmt.Sprintf("%s: %s: %s", e.Pos, e.Field, e.Msg)
}

// ErrorList is every problem found in a policy file, in file order.
type ErrorList []*Error

func (l ErrorList) Error() string {
	s := make([]string, len(l))
	for i, e := range l {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

func (p Position) String() string { return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Column) }

// Load reads and parses a policy file.
func Load(path string) (*Set, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// Parse parses a policy file of one or many YAML documents. On any problem it
// returns no Set and an ErrorList naming every problem found, each as
// "file:line:col: field: what is wrong".
func Parse(filename string, data []byte) (*Set, error) {
	p := &parser{file: filename, src: data, set: &Set{}, names: map[string]Position{}}
	if len(data) > MaxFileSize {
		p.errs = append(p.errs, &Error{Pos: Position{filename, 1, 1}, Msg: fmt.Sprintf("file larger than %d bytes", MaxFileSize)})
		return nil, p.errs
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for doc := 0; ; doc++ {
		var n yaml.Node
		err := decodeNode(dec, &n)
		if err == io.EOF {
			break
		}
		if err != nil {
			p.errs = append(p.errs, &Error{Pos: yamlErrorPos(filename, err), Msg: yamlLine.ReplaceAllString(strings.TrimPrefix(err.Error(), "yaml: "), "")})
			break
		}
		p.document(&n)
	}
	if len(p.errs) > 0 {
		sort.SliceStable(p.errs, func(i, j int) bool {
			a, b := p.errs[i].Pos, p.errs[j].Pos
			return a.Line < b.Line || a.Line == b.Line && a.Column < b.Column
		})
		return nil, p.errs
	}
	return p.set, nil
}

// decodeNode guards against panics in the YAML library: hostile input must
// produce an error, never bring the daemon down.
func decodeNode(dec *yaml.Decoder, n *yaml.Node) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("yaml: malformed document (%v)", r)
		}
	}()
	return dec.Decode(n)
}

var yamlLine = regexp.MustCompile(`line (\d+): `)

func yamlErrorPos(file string, err error) Position {
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		if l, e := strconv.Atoi(m[1]); e == nil {
			return Position{file, l, 1}
		}
	}
	return Position{file, 1, 1}
}

type parser struct {
	file  string
	src   []byte
	set   *Set
	errs  ErrorList
	names map[string]Position
}

func (p *parser) pos(n *yaml.Node) Position { return Position{p.file, n.Line, n.Column} }

func (p *parser) errorf(n *yaml.Node, field, format string, args ...any) {
	p.errs = append(p.errs, &Error{Pos: p.pos(n), Field: field, Msg: fmt.Sprintf(format, args...)})
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "nothing"
		case "!!int", "!!float":
			return "a number"
		case "!!bool":
			return "a boolean"
		}
		return "a string"
	}
	return "?"
}

// noAlias reports (and refuses) YAML aliases: expanding them is a classic
// resource-exhaustion attack and no policy needs them.
func (p *parser) noAlias(n *yaml.Node, field string) bool {
	if n.Kind == yaml.AliasNode {
		p.errorf(n, field, "YAML aliases are not supported")
		return false
	}
	return true
}

type fieldFn func(key string, k, v *yaml.Node, field string)

// mapping walks a mapping node, reporting wrong types, duplicate and unknown
// keys; fn is called for every known key.
func (p *parser) mapping(n *yaml.Node, field, what string, allowed []string, fn fieldFn) bool {
	if !p.noAlias(n, field) {
		return false
	}
	if n.Kind != yaml.MappingNode {
		p.errorf(n, field, "want %s (a mapping), got %s", what, kindName(n))
		return false
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			p.errorf(k, field, "keys must be strings, got %s", kindName(k))
			continue
		}
		sub := join(field, k.Value)
		if seen[k.Value] {
			p.errorf(k, sub, "duplicate key")
			continue
		}
		seen[k.Value] = true
		if !contains(allowed, k.Value) {
			p.errorf(k, sub, "unknown key %q in %s (want one of %s)", k.Value, what, strings.Join(allowed, ", "))
			continue
		}
		if !p.noAlias(v, sub) {
			continue
		}
		fn(k.Value, k, v, sub)
	}
	return true
}

func (p *parser) list(n *yaml.Node, field, what string) ([]*yaml.Node, bool) {
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, field, "want a list of %s, got %s", what, kindName(n))
		return nil, false
	}
	return n.Content, true
}

func (p *parser) str(n *yaml.Node, field, what string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() == "!!null" {
		p.errorf(n, field, "want %s, got %s", what, kindName(n))
		return "", false
	}
	if strings.TrimSpace(n.Value) == "" {
		p.errorf(n, field, "empty value, want %s", what)
		return "", false
	}
	return n.Value, true
}

func join(field, key string) string {
	if field == "" {
		return key
	}
	return field + "." + key
}

func index(field string, i int) string { return fmt.Sprintf("%s[%d]", field, i) }

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

var (
	docKeys    = []string{"targetNetworks", "excludedNetworks", "policies"}
	policyKeys = []string{"name", "description", "selector", "ingress", "egress"}
	ingressKey = []string{"name", "from", "ports", "action", "log", "observe"}
	egressKey  = []string{"name", "to", "ports", "action", "log", "observe"}
	peerKeys   = []string{"selector", "cidr", "except"}
	selKeys    = []string{"matchLabels", "matchExpressions"}
	exprKeys   = []string{"key", "operator", "values"}
)

func (p *parser) document(doc *yaml.Node) {
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return
	}
	n := doc.Content[0]
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return // empty document
	}
	p.mapping(n, "", "a policy document", docKeys, func(key string, k, v *yaml.Node, field string) {
		switch key {
		case "targetNetworks":
			p.set.TargetNetworks = append(p.set.TargetNetworks, p.prefixes(v, field)...)
		case "excludedNetworks":
			p.set.ExcludedNetworks = append(p.set.ExcludedNetworks, p.prefixes(v, field)...)
		case "policies":
			items, ok := p.list(v, field, "policies")
			if !ok {
				return
			}
			for i, item := range items {
				p.policy(item, index(field, i))
			}
		}
	})
}

func (p *parser) prefixes(n *yaml.Node, field string) []netip.Prefix {
	items, ok := p.list(n, field, "CIDRs")
	if !ok {
		return nil
	}
	var out []netip.Prefix
	for i, item := range items {
		if pr, ok := p.prefix(item, index(field, i)); ok {
			out = append(out, pr)
		}
	}
	return out
}

// prefix parses a CIDR. A bare address is a single-host prefix. Host bits
// must be zero: "10.0.0.1/8" is almost always a typo.
func (p *parser) prefix(n *yaml.Node, field string) (netip.Prefix, bool) {
	if !p.noAlias(n, field) {
		return netip.Prefix{}, false
	}
	s, ok := p.str(n, field, "a CIDR such as 10.0.0.0/8")
	if !ok {
		return netip.Prefix{}, false
	}
	pr, err := ParseCIDR(s)
	if err != nil {
		p.errorf(n, field, "%v", err)
		return netip.Prefix{}, false
	}
	return pr, true
}

// ParseCIDR parses a CIDR as policy files write them: canonical (no host
// bits), a bare address meaning a single host, no IPv4-mapped IPv6 prefixes
// (addresses are unmapped before matching, so such a prefix would never match).
func ParseCIDR(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	var pr netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		pr, err = netip.ParsePrefix(s)
		if err != nil {
			return pr, fmt.Errorf("bad CIDR %q", s)
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return pr, fmt.Errorf("bad CIDR %q", s)
		}
		pr = netip.PrefixFrom(a, a.BitLen())
	}
	if pr.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("bad CIDR %q: IPv4-mapped IPv6 prefix; write the IPv4 prefix", s)
	}
	if m := pr.Masked(); m != pr {
		return netip.Prefix{}, fmt.Errorf("bad CIDR %q: host bits set (did you mean %s?)", s, m)
	}
	return pr, nil
}

func (p *parser) policy(n *yaml.Node, field string) {
	pol := Policy{Pos: p.pos(n)}
	var haveName, haveSel bool
	ok := p.mapping(n, field, "a policy", policyKeys, func(key string, k, v *yaml.Node, f string) {
		switch key {
		case "name":
			haveName = true
			name, ok := p.str(v, f, "a policy name")
			if !ok {
				return
			}
			if first, dup := p.names[name]; dup {
				p.errorf(v, f, "duplicate policy name %q (first defined at %d:%d)", name, first.Line, first.Column)
				return
			}
			p.names[name] = p.pos(v)
			pol.Name = name
		case "description":
			if v.Kind != yaml.ScalarNode {
				p.errorf(v, f, "want a string, got %s", kindName(v))
			}
		case "selector":
			haveSel = true
			pol.Selector = p.selector(v, f)
		case "ingress":
			pol.Ingress = p.rules(v, f, Ingress)
		case "egress":
			pol.Egress = p.rules(v, f, Egress)
		}
	})
	if !ok {
		return
	}
	if !haveName {
		p.errorf(n, field, "missing name")
	}
	if !haveSel {
		p.errorf(n, field, "missing selector (use \"*\" to select every PU)")
	}
	p.set.Policies = append(p.set.Policies, pol)
}

// valueColumn returns the column of byte offset off of a scalar's value,
// when the value stands verbatim on the scalar's line (plain, or quoted
// without escapes); otherwise the scalar's own column.
func (p *parser) valueColumn(n *yaml.Node, off int) int {
	line := n.Line
	rest := p.src
	for ; line > 1; line-- {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			return n.Column
		}
		rest = rest[i+1:]
	}
	if i := bytes.IndexByte(rest, '\n'); i >= 0 {
		rest = rest[:i]
	}
	col := 1
	for col < n.Column && len(rest) > 0 { // columns count characters
		_, size := utf8.DecodeRune(rest)
		rest = rest[size:]
		col++
	}
	q := 0
	if n.Style == yaml.SingleQuotedStyle || n.Style == yaml.DoubleQuotedStyle {
		q = 1
	}
	if col != n.Column || len(rest) < q || !bytes.HasPrefix(rest[q:], []byte(n.Value)) {
		return n.Column
	}
	return n.Column + q + utf8.RuneCountInString(n.Value[:off])
}

// selector parses a selector in string or structured form. Empty selectors
// are refused: "*" says "every PU" explicitly.
func (p *parser) selector(n *yaml.Node, field string) *Selector {
	if n.Kind == yaml.ScalarNode {
		s, ok := p.str(n, field, "a selector")
		if !ok {
			return nil
		}
		sel, err := ParseSelector(s)
		if err != nil {
			e := &Error{Pos: p.pos(n), Field: field, Msg: fmt.Sprintf("bad selector %q: %v", s, err)}
			if se, ok := err.(*selError); ok && se.Offset <= len(n.Value) {
				e.Pos.Column = p.valueColumn(n, se.Offset)
			}
			p.errs = append(p.errs, e)
			return nil
		}
		return sel
	}
	var reqs, labelReqs []Requirement
	bad := false
	ok := p.mapping(n, field, "a selector", selKeys, func(key string, k, v *yaml.Node, f string) {
		switch key {
		case "matchLabels":
			r, ok := p.matchLabels(v, f)
			bad = bad || !ok
			labelReqs = r
		case "matchExpressions":
			items, ok := p.list(v, f, "match expressions")
			if !ok {
				bad = true
				return
			}
			for i, item := range items {
				r, ok := p.expression(item, index(f, i))
				if !ok {
					bad = true
					continue
				}
				reqs = append(reqs, r)
			}
		}
	})
	if !ok || bad {
		return nil
	}
	reqs = append(labelReqs, reqs...)
	if len(reqs) == 0 {
		p.errorf(n, field, "empty selector (use \"*\" to select everything)")
		return nil
	}
	sel, err := newStructuredSelector(reqs)
	if err != nil {
		p.errorf(n, field, "bad selector: %v", err)
		return nil
	}
	return sel
}

func (p *parser) matchLabels(n *yaml.Node, field string) ([]Requirement, bool) {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, field, "want a mapping of key: value, got %s", kindName(n))
		return nil, false
	}
	var out []Requirement
	seen := map[string]bool{}
	good := true
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		f := join(field, k.Value)
		switch {
		case k.Kind != yaml.ScalarNode:
			p.errorf(k, field, "keys must be strings, got %s", kindName(k))
		case seen[k.Value]:
			p.errorf(k, f, "duplicate key")
		case v.Kind != yaml.ScalarNode || v.ShortTag() == "!!null":
			p.errorf(v, f, "want a tag value, got %s", kindName(v))
		case checkValue(v.Value) != nil:
			p.errorf(v, f, "%v", checkValue(v.Value))
		default:
			seen[k.Value] = true
			out = append(out, Requirement{Key: k.Value, Op: OpIn, Values: []string{v.Value}})
			continue
		}
		good = false
	}
	return out, good
}

func (p *parser) expression(n *yaml.Node, field string) (Requirement, bool) {
	var r Requirement
	var haveKey, haveOp, haveValues, good = false, false, false, true
	ok := p.mapping(n, field, "a match expression", exprKeys, func(key string, k, v *yaml.Node, f string) {
		switch key {
		case "key":
			s, ok := p.str(v, f, "a tag key")
			if !ok {
				good = false
				return
			}
			haveKey, r.Key = true, s
		case "operator":
			s, ok := p.str(v, f, "an operator")
			if !ok {
				good = false
				return
			}
			haveOp = true
			switch s {
			case "In":
				r.Op = OpIn
			case "NotIn":
				r.Op = OpNotIn
			case "Exists":
				r.Op = OpExists
			case "DoesNotExist":
				r.Op = OpDoesNotExist
			default:
				p.errorf(v, f, "bad operator %q: want In, NotIn, Exists or DoesNotExist", s)
				good = false
			}
		case "values":
			items, ok := p.list(v, f, "values")
			if !ok {
				good = false
				return
			}
			haveValues = true
			for i, item := range items {
				if item.Kind != yaml.ScalarNode || item.ShortTag() == "!!null" {
					p.errorf(item, index(f, i), "want a value, got %s", kindName(item))
					good = false
					continue
				}
				if err := checkValue(item.Value); err != nil {
					p.errorf(item, index(f, i), "%v", err)
					good = false
					continue
				}
				r.Values = append(r.Values, item.Value)
			}
		}
	})
	if !ok || !good {
		return r, false
	}
	if !haveKey {
		p.errorf(n, field, "missing key")
		return r, false
	}
	if !haveOp {
		p.errorf(n, field, "missing operator")
		return r, false
	}
	switch r.Op {
	case OpIn, OpNotIn:
		if len(r.Values) == 0 {
			p.errorf(n, field, "operator %s needs values", r.Op)
			return r, false
		}
	default:
		if haveValues {
			p.errorf(n, field, "operator %s takes no values", r.Op)
			return r, false
		}
	}
	return r, true
}

func (p *parser) rules(n *yaml.Node, field string, dir Direction) []Rule {
	items, ok := p.list(n, field, "rules")
	if !ok {
		return nil
	}
	out := make([]Rule, 0, len(items))
	for i, item := range items {
		if r, ok := p.rule(item, index(field, i), dir, i); ok {
			out = append(out, r)
		}
	}
	return out
}

func (p *parser) rule(n *yaml.Node, field string, dir Direction, idx int) (Rule, bool) {
	r := Rule{Index: idx, Pos: p.pos(n)}
	keys, peersKey, other := ingressKey, "from", "to"
	if dir == Egress {
		keys, peersKey, other = egressKey, "to", "from"
	}
	before := len(p.errs)
	haveAction := false
	ok := p.mapping(n, field, dir.String()+" rule", keys, func(key string, k, v *yaml.Node, f string) {
		switch key {
		case "name":
			if s, ok := p.str(v, f, "a rule name"); ok {
				r.Name = s
			}
		case "from", "to":
			r.Peers = p.peers(v, f)
		case "ports":
			r.Ports = p.ports(v, f)
		case "action":
			haveAction = true
			s, ok := p.str(v, f, "an action (allow or reject)")
			if !ok {
				return
			}
			switch s {
			case "allow":
				r.Action = Allow
			case "reject":
				r.Action = Reject
			default:
				p.errorf(v, f, "bad action %q: want allow or reject (what no rule allows is denied)", s)
			}
		case "log":
			if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!bool" {
				p.errorf(v, f, "want true or false, got %s", kindName(v))
				return
			}
			r.Log = v.Value == "true" || v.Value == "True" || v.Value == "TRUE"
		case "observe":
			s, ok := p.str(v, f, "an observe mode (continue or apply)")
			if !ok {
				return
			}
			switch s {
			case "continue":
				r.Observe = ObserveContinue
			case "apply":
				r.Observe = ObserveApply
			default:
				p.errorf(v, f, "bad observe mode %q: want continue or apply", s)
			}
		}
	})
	if !ok {
		return r, false
	}
	// A misplaced from/to is reported by mapping as unknown; say why.
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == other {
			for _, e := range p.errs[before:] {
				if e.Field == join(field, other) {
					e.Msg = fmt.Sprintf("unknown key %q: %s rules name their peers in %q", other, dir, peersKey)
				}
			}
		}
	}
	if !haveAction {
		p.errorf(n, field, "missing action (allow or reject)")
	}
	return r, len(p.errs) == before
}

func (p *parser) peers(n *yaml.Node, field string) []Peer {
	items, ok := p.list(n, field, "peers")
	if !ok {
		return nil
	}
	if len(items) == 0 {
		p.errorf(n, field, "empty peer list (omit it to mean every peer)")
		return nil
	}
	out := make([]Peer, 0, len(items))
	for i, item := range items {
		if pe, ok := p.peer(item, index(field, i)); ok {
			out = append(out, pe)
		}
	}
	return out
}

func (p *parser) peer(n *yaml.Node, field string) (Peer, bool) {
	var pe Peer
	var selNode, cidrNode, exceptNode *yaml.Node
	before := len(p.errs)
	ok := p.mapping(n, field, "a peer (selector, or cidr with except)", peerKeys, func(key string, k, v *yaml.Node, f string) {
		switch key {
		case "selector":
			selNode = k
			pe.Selector = p.selector(v, f)
		case "cidr":
			cidrNode = k
			pe.CIDR, _ = p.prefix(v, f)
		case "except":
			exceptNode = k
			items, ok := p.list(v, f, "CIDRs")
			if !ok {
				return
			}
			for i, item := range items {
				if e, ok := p.prefix(item, index(f, i)); ok {
					pe.Except = append(pe.Except, e)
				}
			}
		}
	})
	if !ok {
		return pe, false
	}
	switch {
	case selNode != nil && cidrNode != nil:
		p.errorf(cidrNode, join(field, "cidr"), "a peer is either a selector or a cidr, not both (write two peers)")
	case selNode == nil && cidrNode == nil:
		p.errorf(n, field, "empty peer: want selector or cidr")
	case selNode != nil && exceptNode != nil:
		p.errorf(exceptNode, join(field, "except"), "except belongs to a cidr peer")
	}
	if cidrNode != nil && pe.CIDR.IsValid() {
		for i, e := range pe.Except {
			if e.Addr().Is4() != pe.CIDR.Addr().Is4() || e.Bits() < pe.CIDR.Bits() || !pe.CIDR.Contains(e.Addr()) {
				p.errorf(p.exceptItem(n, i), index(join(field, "except"), i), "%s is not inside cidr %s", e, pe.CIDR)
			}
		}
	}
	return pe, len(p.errs) == before
}

// exceptItem finds the node of the i-th valid except entry, for its position.
func (p *parser) exceptItem(peer *yaml.Node, i int) *yaml.Node {
	for j := 0; j+1 < len(peer.Content); j += 2 {
		if peer.Content[j].Value == "except" && peer.Content[j+1].Kind == yaml.SequenceNode && i < len(peer.Content[j+1].Content) {
			return peer.Content[j+1].Content[i]
		}
	}
	return peer
}

func (p *parser) ports(n *yaml.Node, field string) []PortRange {
	items, ok := p.list(n, field, "ports such as tcp/80")
	if !ok {
		return nil
	}
	if len(items) == 0 {
		p.errorf(n, field, "empty port list (omit it to mean every port and protocol)")
		return nil
	}
	out := make([]PortRange, 0, len(items))
	for i, item := range items {
		f := index(field, i)
		if !p.noAlias(item, f) {
			continue
		}
		if item.Kind != yaml.ScalarNode || item.ShortTag() != "!!str" {
			p.errorf(item, f, "want protocol[/port[-port]] such as tcp/80, got %s", kindName(item))
			continue
		}
		pr, err := ParsePortRange(item.Value)
		if err != nil {
			p.errorf(item, f, "%v", err)
			continue
		}
		out = append(out, pr)
	}
	return out
}

// ParsePortRange parses "tcp/80", "tcp/8000-8080", "udp/53", "tcp" (every TCP
// port), "icmp", "icmpv6".
func ParsePortRange(s string) (PortRange, error) {
	s = strings.TrimSpace(s)
	name, ports, hasPorts := strings.Cut(s, "/")
	var proto ipproto.Proto
	if err := proto.UnmarshalText([]byte(name)); err != nil || !proto.Named() || proto == ipproto.Any {
		return PortRange{}, fmt.Errorf("bad port %q: unknown protocol %q (want tcp, udp, sctp, icmp or icmpv6)", s, name)
	}
	if !hasPorts {
		return PortRange{Protocol: proto, First: 0, Last: 65535}, nil
	}
	if proto == ipproto.ICMP || proto == ipproto.ICMPv6 {
		return PortRange{}, fmt.Errorf("bad port %q: %s has no ports", s, name)
	}
	a, b, isRange := strings.Cut(ports, "-")
	first, err := parsePort(a)
	if err != nil {
		return PortRange{}, fmt.Errorf("bad port %q: %v", s, err)
	}
	last := first
	if isRange {
		if last, err = parsePort(b); err != nil {
			return PortRange{}, fmt.Errorf("bad port range %q: %v", s, err)
		}
		if first > last {
			return PortRange{}, fmt.Errorf("bad port range %q: %d > %d", s, first, last)
		}
	}
	return PortRange{Protocol: proto, First: first, Last: last}, nil
}

func parsePort(s string) (uint16, error) {
	if s == "" {
		return 0, errors.New("missing port number")
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("port %q is not a number", s)
		}
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %s out of range 1-65535", s)
	}
	return uint16(n), nil
}

func (pr PortRange) String() string {
	name := pr.Protocol.String()
	if pr.Protocol == ipproto.Any {
		return "any"
	}
	if pr.First == 0 && pr.Last == 65535 {
		return name
	}
	if pr.First == pr.Last {
		return fmt.Sprintf("%s/%d", name, pr.First)
	}
	return fmt.Sprintf("%s/%d-%d", name, pr.First, pr.Last)
}

// Matches reports whether the range covers proto/port.
func (pr PortRange) Matches(proto ipproto.Proto, port uint16) bool {
	return (pr.Protocol == ipproto.Any || pr.Protocol == proto) && port >= pr.First && port <= pr.Last
}

func (a Action) String() string {
	switch a {
	case Allow:
		return "allow"
	case Reject:
		return "reject"
	}
	return "deny"
}

func (o ObserveMode) String() string {
	switch o {
	case ObserveContinue:
		return "continue"
	case ObserveApply:
		return "apply"
	}
	return "enforce"
}
