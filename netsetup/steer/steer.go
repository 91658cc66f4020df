// Package steer programs the nftables netdev rules that steer a PU's
// packets into the Go dataplane: every TCP SYN and SYN-ACK, and every
// packet of a flow that is not (yet) authorized, is duplicated into a TAP
// and dropped; packets of authorized flows, ARP, on-link IPv6 neighbour
// discovery, excluded peers and packets the dataplane injected itself stay
// in the kernel. Before anything else, frames leaving a PU that name
// another sender (MAC, IP, ARP or NDP link-layer address) or come from a
// router or DHCP server are dropped and counted (rules.go, identity.go).
// See docs/steering.md for the table layout.
//
// A node's PUs are spread over netdev tables of at most Config.ShardSize
// PUs each ("shards": TablePrefix+node, then TablePrefix+node+"_s1", ...):
// the kernel checks every rule of a table each time rules are added to it,
// so with one table attaching a PU cost more the more PUs there were.
// Per PU there are two base chains on its host-side veth: "in_<pu>" (hook
// ingress: traffic leaving the PU, steered to the PU's TapIn) and
// "out_<pu>" (hook egress: traffic toward the PU, steered to TapOut), and
// two authorized sets "a4_<pu>" / "a6_<pu>" (concatenated 5-tuple keys,
// per-element timeouts) shared by both chains. Each table holds a copy of
// the excluded networks, the interval sets "x4" and "x6".
package steer

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// TablePrefix starts the name of every nftables table trireme creates.
const TablePrefix = "trireme_"

// DefaultMark is the packet mark (SO_MARK) of injected packets ("trir").
const DefaultMark uint32 = 0x74726972

// DefaultShardSize is the number of PUs per nftables table.
const DefaultShardSize = 32

// Config of a node's steering tables.
type Config struct {
	Node  string // table names start with TablePrefix + Node
	Mark  uint32 // mark of injected packets; 0: DefaultMark
	NetNS int    // fd of the network namespace to program; 0: the caller's
	// ShardSize is the number of PUs a table holds; 0: DefaultShardSize.
	// A table of a previous run keeps the PUs it has even beyond it (their
	// authorized flows live there).
	ShardSize int
	// Budget bounds the packets a second each PU can make the dataplane
	// process (budget.go); zero: no bound.
	Budget Budget
	// EndLog: FINs and RSTs of authorized flows pass in the kernel and
	// are logged to an NFLOG group (rules.go, endRules); off: they are
	// steered like every FIN and RST.
	EndLog EndLog
}

// EndLog says where the end rules log the FINs and RSTs they pass.
type EndLog struct {
	Enabled bool
	Group   uint16 // the daemon's NFLOG group (netsetup/nflog)
}

// PU is what the steering rules of one PU need.
type PU struct {
	Name   string // [A-Za-z0-9_-], at most 64 bytes, unique on the node
	Veth   string // host-side veth: the chains hook here
	TapIn  int    // ifindex of the TAP for traffic leaving the PU
	TapOut int    // ifindex of the TAP for traffic toward the PU
	// MAC and Addrs are who the PU is on the link (see identity.go): every
	// frame leaving it must carry MAC as Ethernet (and ARP/NDP link-layer)
	// source and one of Addrs as IP source; anything else is dropped and
	// counted. Addrs are its IPv4, IPv6 global/ULA and link-local
	// addresses, with the length of their on-link prefix.
	MAC   net.HardwareAddr
	Addrs []netip.Prefix
}

// Entry is one element of an authorized set.
type Entry struct {
	Tuple   Tuple
	Timeout time.Duration // 0: none
	Expires time.Duration // time left
}

// Counters of one PU, from the kernel's named counters.
type Counters struct {
	InSteered, InAuthorized   Packets // traffic leaving the PU
	OutSteered, OutAuthorized Packets // traffic toward the PU
	// Leaving the PU, dropped by the anti-spoofing rules: frames whose
	// sender is not the PU's own (Spoofed), router advertisements,
	// redirects and DHCP server replies (RogueRouter).
	Spoofed, RogueRouter Packets
	InOverBudget         Packets // leaving the PU, dropped over its packet budget (budget.go)
	// Of the authorized packets, those the fast path (rule F) accepted;
	// the rest took rule 5 or the connection-end rules.
	InFast, OutFast Packets
}

// withFast adds the fast path's packets, read from their own counters, to
// the authorized ones.
func (c Counters) withFast() Counters {
	c.InAuthorized.add(c.InFast)
	c.OutAuthorized.add(c.OutFast)
	return c
}

func (p *Packets) add(q Packets) { p.Packets += q.Packets; p.Bytes += q.Bytes }

// field is the field a PU's counter with this name suffix (counterSuffixes)
// is read into; nil for another name.
func (c *Counters) field(suffix string) *Packets {
	switch suffix {
	case "_in_steer":
		return &c.InSteered
	case "_in_auth":
		return &c.InAuthorized
	case "_out_steer":
		return &c.OutSteered
	case "_out_auth":
		return &c.OutAuthorized
	case "_in_spoof":
		return &c.Spoofed
	case "_in_rogue":
		return &c.RogueRouter
	case "_in_budget":
		return &c.InOverBudget
	case "_in_fast":
		return &c.InFast
	case "_out_fast":
		return &c.OutFast
	}
	return nil
}

// Packets is a packet and byte count.
type Packets struct{ Packets, Bytes uint64 }

// Errors.
var (
	ErrUnknownPU = errors.New("steer: unknown PU")
	ErrBadName   = errors.New("steer: invalid name")
)

// puSets are the sets a PU's rules look up: its authorized flows, its
// table's excluded networks and its identity (identity.go).
type puSets struct {
	a4, a6         *nftables.Set // authorized flows (kept across Apply)
	x4, x6         *nftables.Set // the table's excluded networks
	o4, o6, n6, d6 *nftables.Set // the PU's identity (identity.go)
}

// shard is one of the node's tables.
type shard struct {
	idx    int
	table  *nftables.Table
	x4, x6 *nftables.Set
	pus    int
}

type puState struct {
	pu    PU
	shard *shard
	sets  puSets
}

// Steerer owns a node's steering tables. Its methods are safe for
// concurrent use; kernel changes are serialised.
type Steerer struct {
	mu       sync.Mutex
	cfg      Config
	conn     *nftables.Conn // dumps
	tw       txnWriter      // table, chain, rule, set and counter changes
	shards   map[int]*shard
	pus      map[string]*puState
	excluded []netip.Prefix
	elems    elemWriter
	keyBuf   []byte
	links    *netlink.Handle // rtnetlink in the node's namespace
	closed   bool
}

// Open connects to nftables for the node. It changes nothing in the kernel:
// call Apply to (re)build the tables.
func Open(cfg Config) (*Steerer, error) {
	if err := checkName(cfg.Node); err != nil {
		return nil, err
	}
	if cfg.Mark == 0 {
		cfg.Mark = DefaultMark
	}
	if cfg.ShardSize <= 0 {
		cfg.ShardSize = DefaultShardSize
	}
	opts := []nftables.ConnOption{nftables.AsLasting()}
	if cfg.NetNS != 0 {
		opts = append(opts, nftables.WithNetNSFd(cfg.NetNS))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("steer: nftables: %w", err)
	}
	var links *netlink.Handle
	if cfg.NetNS != 0 {
		links, err = netlink.NewHandleAt(netns.NsHandle(cfg.NetNS))
	} else {
		links, err = netlink.NewHandle()
	}
	if err != nil {
		conn.CloseLasting()
		return nil, fmt.Errorf("steer: rtnetlink: %w", err)
	}
	return &Steerer{
		links:  links,
		cfg:    cfg,
		conn:   conn,
		tw:     txnWriter{netns: cfg.NetNS},
		shards: map[int]*shard{},
		pus:    map[string]*puState{},
		elems:  elemWriter{netns: cfg.NetNS},
	}, nil
}

// TableName is the node's first table (every PU's, up to ShardSize PUs).
func (s *Steerer) TableName() string { return s.shardName(0) }

func (s *Steerer) shardName(i int) string {
	if i == 0 {
		return TablePrefix + s.cfg.Node
	}
	return TablePrefix + s.cfg.Node + "_s" + strconv.Itoa(i)
}

// shardOf returns the shard number of one of the node's table names.
func shardOf(node, table string) (int, bool) {
	rest, ok := strings.CutPrefix(table, TablePrefix+node)
	if !ok {
		return 0, false
	}
	if rest == "" {
		return 0, true
	}
	num, ok := strings.CutPrefix(rest, "_s")
	if !ok || num == "" || num[0] == '0' || len(num) > 6 {
		return 0, false
	}
	i, err := strconv.Atoi(num)
	return i, err == nil && i > 0
}

// Mark is the mark injected packets must carry (inject.New's mark).
func (s *Steerer) Mark() uint32 { return s.cfg.Mark }

// Close closes the netlink sockets. The tables stay in the kernel (so that
// a daemon that stops or crashes keeps failing closed); Delete removes
// them.
func (s *Steerer) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.elems.close()
	s.tw.close()
	s.links.Close()
	return s.conn.CloseLasting()
}

func checkName(n string) error {
	if n == "" || len(n) > 64 {
		return fmt.Errorf("%w: %q (1..64 bytes)", ErrBadName, n)
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("%w: %q", ErrBadName, n)
		}
	}
	return nil
}

func counterName(pu, dir, what string) string { return pu + "_" + dir + "_" + what }

// puOfCounter returns the PU a counter name "<pu>_<dir>_<what>" belongs to.
func puOfCounter(name string) string {
	for _, sfx := range counterSuffixes {
		if p, ok := strings.CutSuffix(name, sfx); ok {
			return p
		}
	}
	return ""
}

// puOfChain returns the PU of a chain name "in_<pu>" or "out_<pu>".
func puOfChain(name string) string {
	if p, ok := strings.CutPrefix(name, "in_"); ok {
		return p
	}
	if p, ok := strings.CutPrefix(name, "out_"); ok {
		return p
	}
	return ""
}

// puOfSet returns the PU of a PU's set: for an authorized set ("a4_<pu>",
// "a6_<pu>") with the key length it must have, for an identity set
// ("o4_<pu>", ...: identity.go) with key length 0.
func puOfSet(name string) (string, uint32) {
	if p, ok := strings.CutPrefix(name, "a4_"); ok {
		return p, key4Len
	}
	if p, ok := strings.CutPrefix(name, "a6_"); ok {
		return p, key6Len
	}
	for _, pfx := range identityPrefixes {
		if p, ok := strings.CutPrefix(name, pfx); ok {
			return p, 0
		}
	}
	return "", 0
}

// found is what one of the node's tables holds, as dumped.
type found struct {
	idx    int
	chains map[string]bool
	sets   map[string]*nftables.Set
	objs   map[string]bool
}

// usableAuthSet: a set of a previous run that can be kept as a PU's
// authorized set.
func usableAuthSet(set *nftables.Set, keyLen uint32) bool {
	return set.HasTimeout && set.Concatenation && set.KeyType.Bytes == keyLen
}

func usableExcludedSet(set *nftables.Set, v6 bool) bool {
	want := nftables.TypeIPAddr
	if v6 {
		want = nftables.TypeIP6Addr
	}
	return set.Interval && !set.Concatenation && set.KeyType.Bytes == want.Bytes
}

// discover dumps the node's tables: chains, set definitions and objects
// (small dumps, no elements).
func (s *Steerer) discover() (map[int]*found, error) {
	tables, err := s.conn.ListTablesOfFamily(nftables.TableFamilyNetdev)
	if err != nil {
		return nil, fmt.Errorf("steer: list tables: %w", err)
	}
	out := map[int]*found{}
	for _, t := range tables {
		if i, ok := shardOf(s.cfg.Node, t.Name); ok {
			out[i] = &found{idx: i, chains: map[string]bool{}, sets: map[string]*nftables.Set{}, objs: map[string]bool{}}
		}
	}
	if len(out) == 0 {
		return out, nil
	}
	chains, err := s.conn.ListChainsOfTableFamily(nftables.TableFamilyNetdev)
	if err != nil {
		return nil, fmt.Errorf("steer: list chains: %w", err)
	}
	for _, c := range chains {
		if c.Table == nil {
			continue
		}
		if i, ok := shardOf(s.cfg.Node, c.Table.Name); ok && out[i] != nil {
			out[i].chains[c.Name] = true
		}
	}
	for i, f := range out {
		t := &nftables.Table{Name: s.shardName(i), Family: nftables.TableFamilyNetdev}
		sets, err := s.conn.GetSets(t)
		if err != nil {
			return nil, fmt.Errorf("steer: list sets of %s: %w", t.Name, err)
		}
		for _, set := range sets {
			f.sets[set.Name] = set
		}
		objs, err := s.conn.GetObjects(t)
		if err != nil {
			return nil, fmt.Errorf("steer: list objects of %s: %w", t.Name, err)
		}
		for _, o := range objs {
			if co, ok := o.(*nftables.CounterObj); ok {
				f.objs[co.Name] = true
			}
		}
	}
	return out, nil
}

// home returns the table of a previous run that holds a PU: the one with
// its authorized sets (its flows), else the one with its chains.
func home(cur map[int]*found, pu string) (int, bool) {
	best, ok := 0, false
	for _, i := range sortedKeys(cur) {
		f := cur[i]
		if set := f.sets["a4_"+pu]; set != nil && usableAuthSet(set, key4Len) {
			return i, true
		}
		if !ok && f.chains["in_"+pu] {
			best, ok = i, true
		}
	}
	return best, ok
}

func sortedKeys[V any](m map[int]V) []int {
	ks := make([]int, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// Apply replaces everything in the node's tables with the rules for the
// given PUs and excluded networks: the chains, counters, sets and tables of
// a previous or crashed run that are not wanted are deleted, the chains of
// the wanted PUs are built anew. The authorized sets (and counters) of PUs
// present before and after are kept in place, elements untouched, so a
// restarted daemon keeps its established flows in the kernel; such a PU
// stays in the table that holds them. (Reading the elements out and
// writing them back is not an option: a dump of a hash set that is being
// resized, as after many inserts, returns duplicates and misses entries.)
//
// Each PU's chains are replaced atomically (its old rules, which steer to
// the same TAPs, until its new ones are in place): no PU is unpoliced at
// any moment. The change is made in transactions of bounded size, several
// PUs each, the excluded networks of a table before its PUs. If Apply fails
// midway, the PUs done so far are in place and the others keep their
// previous rules; the Steerer's view is read back from the kernel.
func (s *Steerer) Apply(pus []PU, excluded []netip.Prefix) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	for _, pu := range pus {
		if err := s.checkPU(pu); err != nil {
			return err
		}
		if seen[pu.Name] {
			return fmt.Errorf("steer: PU %q listed twice", pu.Name)
		}
		seen[pu.Name] = true
	}
	ex, err := canonical(excluded)
	if err != nil {
		return err
	}
	cur, err := s.discover()
	if err != nil {
		return err
	}
	// Where each PU goes: where its flows are, else the first table with
	// room.
	assign := map[string]int{}
	count := map[int]int{0: 0}
	for _, pu := range pus {
		if i, ok := home(cur, pu.Name); ok {
			assign[pu.Name] = i
			count[i]++
		}
	}
	for _, pu := range pus {
		if _, ok := assign[pu.Name]; ok {
			continue
		}
		i := 0
		for count[i] >= s.cfg.ShardSize {
			i++
		}
		assign[pu.Name] = i
		count[i]++
	}
	byShard := map[int][]PU{}
	for _, pu := range pus {
		byShard[assign[pu.Name]] = append(byShard[assign[pu.Name]], pu)
	}
	shards := map[int]*shard{}
	states := map[string]*puState{}
	var units []unit
	idxs := sortedKeys(count)
	for _, i := range idxs {
		if _, ok := cur[i]; !ok {
			cur[i] = nil
		}
	}
	for _, i := range sortedKeys(cur) {
		f := cur[i]
		if count[i] == 0 && i != 0 {
			// A table of a previous run with none of the wanted PUs.
			t := &nftables.Table{Name: s.shardName(i), Family: nftables.TableFamilyNetdev}
			b := newBuilder()
			b.DelTable(t)
			u, err := b.take("table " + t.Name)
			if err != nil {
				return err
			}
			units = append(units, u)
			continue
		}
		us, sh, sts, err := s.planShard(i, f, byShard[i], ex)
		if err != nil {
			return err
		}
		shards[i] = sh
		for n, st := range sts {
			states[n] = st
		}
		units = append(units, us...)
	}
	if err := s.tw.commit(units); err != nil {
		if rerr := s.reread(); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return err
	}
	s.shards, s.pus, s.excluded = shards, states, ex
	return nil
}

// planShard returns the units that make table i hold exactly the given PUs
// and excluded networks, from what it holds now (f, nil if it does not
// exist): first the table, its excluded sets and the deletion of what is
// not wanted, then one unit per PU.
func (s *Steerer) planShard(i int, f *found, pus []PU, ex []netip.Prefix) ([]unit, *shard, map[string]*puState, error) {
	t := &nftables.Table{Name: s.shardName(i), Family: nftables.TableFamilyNetdev}
	sh := &shard{idx: i, table: t, pus: len(pus)}
	if f == nil {
		f = &found{chains: map[string]bool{}, sets: map[string]*nftables.Set{}, objs: map[string]bool{}}
	}
	wanted := map[string]bool{}
	for _, pu := range pus {
		wanted[pu.Name] = true
	}
	// Excluded sets that cannot be flushed and refilled (another type)
	// must be deleted, and every chain looking them up first: the whole
	// table is then rebuilt in one unit.
	rebuild := false
	for _, x := range []struct {
		name string
		v6   bool
	}{{"x4", false}, {"x6", true}} {
		if set := f.sets[x.name]; set != nil && !usableExcludedSet(set, x.v6) {
			rebuild = true
		}
	}
	b := newBuilder()
	b.AddTable(t) // no-op if it exists
	// Chains first: deleting a chain deletes its rules, which releases the
	// sets they look up.
	for _, c := range sortedNames(f.chains) {
		if rebuild || !wanted[puOfChain(c)] {
			b.DelChain(&nftables.Chain{Table: t, Name: c})
		}
	}
	for _, n := range sortedNames(f.sets) {
		pu, keyLen := puOfSet(n)
		switch {
		case n == "x4" || n == "x6":
			if rebuild {
				b.DelSet(&nftables.Set{Table: t, Name: n})
			}
		case wanted[pu] && keyLen != 0 && usableAuthSet(f.sets[n], keyLen):
		case wanted[pu]:
			// An identity set, or an unusable authorized set: deleted
			// in the PU's unit, once its chains are.
		default:
			b.DelSet(&nftables.Set{Table: t, Name: n})
		}
	}
	for _, n := range sortedNames(f.objs) {
		if !wanted[puOfCounter(n)] {
			b.DeleteObject(&nftables.CounterObj{Table: t, Name: n})
		}
	}
	sh.x4 = &nftables.Set{Table: t, Name: "x4", KeyType: nftables.TypeIPAddr, Interval: true}
	sh.x6 = &nftables.Set{Table: t, Name: "x6", KeyType: nftables.TypeIP6Addr, Interval: true}
	v4, v6 := split(merged(ex))
	for _, x := range []struct {
		set *nftables.Set
		els []nftables.SetElement
	}{{sh.x4, intervalElements(v4)}, {sh.x6, intervalElements(v6)}} {
		if f.sets[x.set.Name] != nil && !rebuild {
			b.FlushSet(x.set)
			if err := addElements(b, x.set, x.els); err != nil {
				return nil, nil, nil, err
			}
		} else if err := addSet(b, x.set, x.els); err != nil {
			return nil, nil, nil, err
		}
	}
	head, err := b.take("table " + t.Name)
	if err != nil {
		return nil, nil, nil, err
	}
	units := []unit{head}
	states := map[string]*puState{}
	for _, pu := range pus {
		old := f
		if rebuild {
			// Its chains are deleted by the head unit already.
			old = &found{chains: map[string]bool{}, sets: f.sets, objs: f.objs}
		}
		u, st, err := s.puUnit(sh, pu, old)
		if err != nil {
			return nil, nil, nil, err
		}
		states[pu.Name] = st
		if rebuild {
			units[0].msgs = append(units[0].msgs, u.msgs...)
		} else {
			units = append(units, u)
		}
	}
	return units, sh, states, nil
}

func sortedNames[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// Adopt takes the node's tables as the kernel holds them as the Steerer's
// view, without changing them: a tool can then authorize or list flows of
// the PUs found there (tests and perf fill the sets of a stopped daemon
// this way). Apply is what a daemon calls.
func (s *Steerer) Adopt() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reread()
}

// reread rebuilds the Steerer's view (tables, PUs, excluded networks) from
// the kernel, after a change that failed midway.
func (s *Steerer) reread() error {
	cur, err := s.discover()
	if err != nil {
		return err
	}
	shards := map[int]*shard{}
	pus := map[string]*puState{}
	for _, i := range sortedKeys(cur) {
		f := cur[i]
		t := &nftables.Table{Name: s.shardName(i), Family: nftables.TableFamilyNetdev}
		sh := &shard{idx: i, table: t,
			x4: &nftables.Set{Table: t, Name: "x4", KeyType: nftables.TypeIPAddr, Interval: true},
			x6: &nftables.Set{Table: t, Name: "x6", KeyType: nftables.TypeIP6Addr, Interval: true}}
		shards[i] = sh
		for c := range f.chains {
			name, ok := strings.CutPrefix(c, "in_")
			if !ok || pus[name] != nil || f.sets["a4_"+name] == nil || f.sets["a6_"+name] == nil {
				continue
			}
			sh.pus++
			pus[name] = &puState{pu: PU{Name: name}, shard: sh, sets: puSets{a4: f.sets["a4_"+name], a6: f.sets["a6_"+name], x4: sh.x4, x6: sh.x6,
				o4: f.sets["o4_"+name], o6: f.sets["o6_"+name], n6: f.sets["n6_"+name], d6: f.sets["d6_"+name]}}
		}
	}
	s.shards, s.pus = shards, pus
	return nil
}

// checkPU validates a PU and checks that its veth and TAPs exist. The
// kernel (6.18) accepts netdev chains for devices that do not exist yet and
// binds them when a device of that name appears: a typo would silently
// leave a PU unpoliced until then, so it is refused here.
func (s *Steerer) checkPU(pu PU) error {
	if err := checkName(pu.Name); err != nil {
		return err
	}
	if pu.Veth == "" || len(pu.Veth) > 15 {
		return fmt.Errorf("steer: PU %s: invalid veth name %q", pu.Name, pu.Veth)
	}
	if err := checkIdentity(pu); err != nil {
		return err
	}
	if pu.TapIn <= 0 || pu.TapOut <= 0 || pu.TapIn == pu.TapOut {
		return fmt.Errorf("steer: PU %s: two distinct TAP ifindexes needed (in %d, out %d)", pu.Name, pu.TapIn, pu.TapOut)
	}
	if _, err := s.links.LinkByName(pu.Veth); err != nil {
		return fmt.Errorf("steer: PU %s: veth %s: %w", pu.Name, pu.Veth, err)
	}
	for _, idx := range []int{pu.TapIn, pu.TapOut} {
		l, err := s.links.LinkByIndex(idx)
		if err != nil {
			return fmt.Errorf("steer: PU %s: TAP ifindex %d: %w", pu.Name, idx, err)
		}
		if l.Type() != "tuntap" {
			return fmt.Errorf("steer: PU %s: ifindex %d is a %s, not a TAP", pu.Name, idx, l.Type())
		}
	}
	return nil
}

var (
	key4Type = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeInetService)
	key6Type = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeInetService)
)

// puUnit returns the unit that (re)builds one PU in shard sh: its old
// chains (as found in old) go, its authorized sets and counters are made
// unless old has usable ones, its chains and rules are added.
func (s *Steerer) puUnit(sh *shard, pu PU, old *found) (unit, *puState, error) {
	t := sh.table
	sets := puSets{
		// Counter: each entry counts its packets (FlowCounters).
		a4: &nftables.Set{Table: t, Name: "a4_" + pu.Name, KeyType: key4Type, Concatenation: true, HasTimeout: true, Counter: true},
		a6: &nftables.Set{Table: t, Name: "a6_" + pu.Name, KeyType: key6Type, Concatenation: true, HasTimeout: true, Counter: true},
		x4: sh.x4, x6: sh.x6,
	}
	b := newBuilder()
	for _, c := range []string{"in_" + pu.Name, "out_" + pu.Name} {
		if old.chains[c] {
			b.DelChain(&nftables.Chain{Table: t, Name: c})
		}
	}
	for _, set := range []*nftables.Set{sets.a4, sets.a6} {
		if have := old.sets[set.Name]; have != nil {
			if usableAuthSet(have, set.KeyType.Bytes) {
				continue
			}
			b.DelSet(&nftables.Set{Table: t, Name: set.Name})
		}
		if err := addSet(b, set, nil); err != nil {
			return unit{}, nil, err
		}
	}
	// The identity sets are rebuilt with the chains: they always match
	// the PU given.
	for _, pfx := range identityPrefixes {
		if old.sets[pfx+pu.Name] != nil {
			b.DelSet(&nftables.Set{Table: t, Name: pfx + pu.Name})
		}
	}
	if err := addIdentitySets(b, t, pu, &sets); err != nil {
		return unit{}, nil, err
	}
	for _, name := range puCounters(pu.Name) {
		if !old.objs[name] {
			b.AddObj(&nftables.CounterObj{Table: t, Name: name})
		}
	}
	for _, egress := range []bool{false, true} {
		name, hook := "in_"+pu.Name, nftables.ChainHookIngress
		if egress {
			name, hook = "out_"+pu.Name, nftables.ChainHookEgress
		}
		ch := b.AddChain(&nftables.Chain{
			Name:     name,
			Table:    t,
			Type:     nftables.ChainTypeFilter,
			Hooknum:  hook,
			Priority: nftables.ChainPriorityFilter,
			Device:   pu.Veth,
		})
		for _, r := range s.chainRules(pu, egress, sets) {
			b.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: r})
		}
	}
	u, err := b.take("PU " + pu.Name)
	if err != nil {
		return unit{}, nil, err
	}
	return u, &puState{pu: pu, shard: sh, sets: sets}, nil
}

// addSet queues a set and its elements.
func addSet(b *builder, set *nftables.Set, els []nftables.SetElement) error {
	if err := b.AddSet(set, nil); err != nil {
		return fmt.Errorf("steer: set %s: %w", set.Name, err)
	}
	return addElements(b, set, els)
}

// addElements queues elements in messages of maxElemsPerMsg: a netlink
// attribute (here the element list) cannot exceed 64 KiB, and
// google/nftables puts all elements given to it in one.
func addElements(b *builder, set *nftables.Set, els []nftables.SetElement) error {
	for len(els) > 0 {
		n := min(len(els), maxElemsPerMsg)
		if err := b.SetAddElements(set, els[:n]); err != nil {
			return fmt.Errorf("steer: set %s: %w", set.Name, err)
		}
		els = els[n:]
	}
	return nil
}

// newShardUnit returns the unit that creates table i with the excluded
// sets.
func (s *Steerer) newShardUnit(i int) (unit, *shard, error) {
	us, sh, _, err := s.planShard(i, nil, nil, s.excluded)
	if err != nil {
		return unit{}, nil, err
	}
	return us[0], sh, nil
}

// freeShard returns the table a new PU goes to: the first with room.
func (s *Steerer) freeShard() int {
	for i := 0; ; i++ {
		sh := s.shards[i]
		if sh == nil || sh.pus < s.cfg.ShardSize {
			return i
		}
	}
}

// AddPU adds the chains and sets of one PU (one transaction) to the first
// table with room, creating it if needed. Apply must have run before.
func (s *Steerer) AddPU(pu PU) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkPU(pu); err != nil {
		return err
	}
	if s.shards[0] == nil {
		return fmt.Errorf("steer: AddPU %s before Apply", pu.Name)
	}
	if _, ok := s.pus[pu.Name]; ok {
		return fmt.Errorf("steer: PU %s already present", pu.Name)
	}
	i := s.freeShard()
	var units []unit
	sh := s.shards[i]
	if sh == nil {
		u, nsh, err := s.newShardUnit(i)
		if err != nil {
			return err
		}
		sh = nsh
		u.done = func() { s.shards[i] = nsh }
		units = append(units, u)
	}
	u, st, err := s.puUnit(sh, pu, &found{})
	if err != nil {
		return err
	}
	u.done = func() {
		s.pus[pu.Name] = st
		sh.pus++
	}
	units = append(units, u)
	// One transaction: a new table and its first PU come together.
	if err := s.tw.send(units); err != nil {
		return fmt.Errorf("steer: add PU %s: %w", pu.Name, err)
	}
	for _, u := range units {
		u.done()
	}
	return nil
}

// RemovePU deletes the chains, sets and counters of one PU (one
// transaction); a table left without PUs goes with it (but the first).
func (s *Steerer) RemovePU(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.pus[name]
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownPU, name)
	}
	sh := st.shard
	t := sh.table
	b := newBuilder()
	dropTable := sh.pus == 1 && sh.idx != 0
	if dropTable {
		b.DelTable(t)
	} else {
		b.DelChain(&nftables.Chain{Table: t, Name: "in_" + name})
		b.DelChain(&nftables.Chain{Table: t, Name: "out_" + name})
		b.DelSet(st.sets.a4)
		b.DelSet(st.sets.a6)
		for _, set := range st.sets.identitySets() {
			if set != nil { // nil: a table of an older version, found by Adopt
				b.DelSet(set)
			}
		}
		for _, c := range puCounters(name) {
			b.DeleteObject(&nftables.CounterObj{Table: t, Name: c})
		}
	}
	u, err := b.take("PU " + name)
	if err != nil {
		return err
	}
	if err := s.tw.send([]unit{u}); err != nil {
		return fmt.Errorf("steer: remove PU %s: %w", name, err)
	}
	delete(s.pus, name)
	sh.pus--
	if dropTable {
		delete(s.shards, sh.idx)
	}
	return nil
}

// PUs returns the names of the PUs the tables steer.
func (s *Steerer) PUs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.pus))
	for n := range s.pus {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Tables returns the names of the node's tables, with the number of PUs in
// each.
func (s *Steerer) Tables() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for _, sh := range s.shards {
		out[sh.table.Name] = sh.pus
	}
	return out
}

// Delete removes the node's tables and everything in them (graceful
// stop). Deleting missing tables is not an error.
func (s *Steerer) Delete() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, err := s.discover()
	if err != nil {
		return err
	}
	b := newBuilder()
	for _, i := range sortedKeys(cur) {
		b.DelTable(&nftables.Table{Name: s.shardName(i), Family: nftables.TableFamilyNetdev})
	}
	u, err := b.take("tables of " + s.cfg.Node)
	if err != nil {
		return err
	}
	if err := s.tw.send([]unit{u}); err != nil {
		return fmt.Errorf("steer: delete tables of %s: %w", s.cfg.Node, err)
	}
	s.pus = map[string]*puState{}
	s.shards = map[int]*shard{}
	return nil
}

// DeleteStaleTables removes every netdev table whose name starts with
// TablePrefix except the tables of node ("" removes all): leftovers of
// crashed runs or renamed nodes in this namespace. It returns the names
// removed. It assumes one trireme node per network namespace: a second
// daemon running in the same namespace would lose its tables.
func DeleteStaleTables(netnsFd int, node string) ([]string, error) {
	opts := []nftables.ConnOption{}
	if netnsFd != 0 {
		opts = append(opts, nftables.WithNetNSFd(netnsFd))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("steer: nftables: %w", err)
	}
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyNetdev)
	if err != nil {
		return nil, fmt.Errorf("steer: list tables: %w", err)
	}
	var removed []string
	for _, t := range tables {
		if _, ours := shardOf(node, t.Name); strings.HasPrefix(t.Name, TablePrefix) && (node == "" || !ours) {
			conn.DelTable(t)
			removed = append(removed, t.Name)
		}
	}
	if err := conn.Flush(); err != nil {
		return nil, fmt.Errorf("steer: delete stale tables %v: %w", removed, err)
	}
	return removed, nil
}

// Counters reads the kernel counters of one PU.
func (s *Steerer) Counters(pu string) (Counters, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.pus[pu]
	if !ok {
		return Counters{}, fmt.Errorf("%w: %s", ErrUnknownPU, pu)
	}
	objs, err := s.conn.GetObj(&nftables.CounterObj{Table: st.shard.table})
	if err != nil {
		return Counters{}, fmt.Errorf("steer: counters: %w", err)
	}
	var c Counters
	for _, o := range objs {
		co, ok := o.(*nftables.CounterObj)
		if !ok || co.Table == nil || co.Table.Name != st.shard.table.Name || puOfCounter(co.Name) != pu {
			continue
		}
		if p := c.field(co.Name[len(pu):]); p != nil {
			*p = Packets{Packets: co.Packets, Bytes: co.Bytes}
		}
	}
	return c.withFast(), nil
}
