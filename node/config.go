package node

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/trireme-go/trireme/flow"
)

// Config is the daemon's configuration file. Every field has a default that
// suits a one-node setup, so an empty file is valid apart from the secrets.
type Config struct {
	// Node names this enforcer; it is the `iss` of its tokens and, in PKI
	// mode, must match the node certificate.
	Node string `yaml:"node"`

	Secrets Secrets `yaml:"secrets"`

	// TargetNetworks and ExcludedNetworks add to those of the policy file.
	TargetNetworks   Prefixes `yaml:"targetNetworks"`
	ExcludedNetworks Prefixes `yaml:"excludedNetworks"`

	// Policy is the policy file; it is watched and reloaded on change.
	Policy string `yaml:"policy"`
	// FlowLog receives one JSON flow record per line.
	FlowLog string `yaml:"flowLog"`
	// FlowLogMaxSize is the size at which the flow log is rotated, and
	// FlowLogFiles the number of rotated files kept: the log takes at most
	// (FlowLogFiles+1) * FlowLogMaxSize bytes.
	FlowLogMaxSize ByteSize `yaml:"flowLogMaxSize"`
	FlowLogFiles   *int     `yaml:"flowLogFiles"`
	// FlowLogAggregate is the interval over which repeated refusals of the
	// same flow key are written as one record with a count; 0 turns
	// aggregation off.
	FlowLogAggregate *time.Duration `yaml:"flowLogAggregate"`
	// Socket is the control API's unix socket (mode 0600).
	Socket string `yaml:"socket"`
	// StateDir holds what must survive a restart.
	StateDir string `yaml:"stateDir"`

	Bridge Bridge `yaml:"bridge"`

	// Docker, when enabled, polices the containers of a Docker engine on
	// this node (their bridge and veths must be in the daemon's namespace).
	Docker Docker `yaml:"docker"`

	// Kubernetes, when enabled, makes the daemon a Kubernetes node agent:
	// its policy is the cluster's NetworkPolicies (policy must then be
	// unset) and this node's pods are its PUs (kubernetes.go).
	Kubernetes Kubernetes `yaml:"kubernetes"`

	// MidStream says what happens to packets of a flow the enforcer does not
	// know (e.g. after a restart): drop (the default), reset or acl.
	MidStream MidStream `yaml:"midStream,omitempty"`
	// OnPolicyChange says what happens to established flows when the policy
	// changes: keep them (the default), or reset those the new policy denies.
	OnPolicyChange PolicyChange `yaml:"onPolicyChange,omitempty"`
	// TokenRefresh is how often a PU's identity token is re-signed.
	TokenRefresh time.Duration `yaml:"tokenRefresh,omitempty"`
	// KernelTCPTimeout is how long an authorized TCP flow stays in the
	// kernel's authorized sets after the daemon last authorized it: when
	// it expires, the flow's next packet crosses the daemon once, which
	// authorizes it again (docs/daemon.md).
	KernelTCPTimeout time.Duration `yaml:"kernelTCPTimeout,omitempty"`

	// FlowTable sizes the enforcer's flow table and each PU's share of it.
	FlowTable FlowTable `yaml:"flowTable"`
	// PUPacketBudget bounds the packets a second one PU can make the
	// daemon process.
	PUPacketBudget PacketBudget `yaml:"puPacketBudget"`

	// Observe: the ring of recent flows and the web page (observe.go).
	Observe Observe `yaml:"observe,omitempty"`

	// MaxProcs bounds the CPUs the daemon's Go code runs on at once
	// (runtime.GOMAXPROCS); 0 is automatic (Procs).
	MaxProcs int `yaml:"maxProcs,omitempty"`

	path string
	// keys: where each key set in the file is (dotted name → its value's
	// line and column), so that a finding names the line.
	keys map[string]keyPos
}

// keyPos is a value's position in the config file.
type keyPos struct{ line, col int }

// Secrets selects PSK or PKI mode: exactly one of PSKFile or the three PKI
// files is set.
type Secrets struct {
	PSKFile  string `yaml:"pskFile"`
	CACert   string `yaml:"caCert"`
	NodeCert string `yaml:"nodeCert"`
	NodeKey  string `yaml:"nodeKey"`
	// CAKey, instead of nodeCert and nodeKey, is the CA's key: the node
	// issues itself a certificate for its name at start (a cluster CA held
	// in a Kubernetes Secret). Every node holding it can issue any node's
	// certificate.
	CAKey string `yaml:"caKey"`
}

// Docker configures the Docker monitor.
type Docker struct {
	Enabled bool `yaml:"enabled,omitempty"`
	// Host is the engine's address (default unix:///var/run/docker.sock).
	Host string `yaml:"host"`
}

// PKI reports whether the secrets are in PKI mode.
func (s Secrets) PKI() bool { return s.CACert != "" }

// Bridge is the node bridge PUs created by trireme join.
type Bridge struct {
	Name   string `yaml:"name"`
	Subnet Prefix `yaml:"subnet"`
}

// Prefix is a netip.Prefix read from YAML with the line of a bad value.
type Prefix struct{ netip.Prefix }

// UnmarshalYAML parses a CIDR prefix, naming the line when it is bad.
func (p *Prefix) UnmarshalYAML(n *yaml.Node) error {
	v, err := netip.ParsePrefix(n.Value)
	if n.Kind != yaml.ScalarNode || err != nil {
		return fmt.Errorf("line %d: column %d: %q is not a CIDR prefix", n.Line, n.Column, n.Value)
	}
	p.Prefix = v.Masked()
	return nil
}

// Prefixes is a list of CIDR prefixes read from YAML.
type Prefixes []netip.Prefix

// UnmarshalYAML parses a list of prefixes, naming the line of a bad one.
func (ps *Prefixes) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.SequenceNode {
		return fmt.Errorf("line %d: column %d: want a list of CIDR prefixes", n.Line, n.Column)
	}
	for _, e := range n.Content {
		var p Prefix
		if err := p.UnmarshalYAML(e); err != nil {
			return err
		}
		*ps = append(*ps, p.Prefix)
	}
	return nil
}

// ByteSize is a size in bytes read from YAML as a number or with a unit:
// 100MiB, 512KiB, 1GiB (also KB, MB, GB: powers of 1000).
type ByteSize int64

// UnmarshalYAML parses a size, naming the line when it is bad.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseByteSize(n.Value)
	if n.Kind != yaml.ScalarNode || err != nil {
		return fmt.Errorf("line %d: column %d: %q is not a size (e.g. 100MiB)", n.Line, n.Column, n.Value)
	}
	*b = v
	return nil
}

// ParseByteSize parses "123", "100MiB", "2GB", ...
func ParseByteSize(s string) (ByteSize, error) {
	num := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		sfx string
		m   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}} {
		if v, ok := strings.CutSuffix(num, u.sfx); ok {
			num, mult = strings.TrimSpace(v), u.m
			break
		}
	}
	v, err := strconv.ParseInt(num, 10, 64)
	if err != nil || v < 0 || v > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size", s)
	}
	return ByteSize(v * mult), nil
}

// Defaults.
const (
	DefaultSocket   = "/run/trireme/trireme.sock"
	DefaultStateDir = "/var/lib/trireme"
	DefaultFlowLog  = "/var/log/trireme/flows.jsonl"
	DefaultBridge   = "trireme0"
	DefaultRefresh  = 5 * time.Minute
	// The flow log takes at most 6 * 100 MiB.
	DefaultFlowLogMaxSize   ByteSize = 100 << 20
	DefaultFlowLogFiles              = 5
	DefaultFlowLogAggregate          = 10 * time.Second
)

var DefaultSubnet = netip.MustParsePrefix("10.77.0.0/16")

// nodeName: what may name a node (DNS label-ish; also an nft name part).
var nodeName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)

// ifName: a Linux interface name, leaving room for our suffixes.
var ifName = regexp.MustCompile(`^[a-zA-Z0-9_.-]{1,12}$`)

// LoadConfig reads, defaults and validates a config file. Errors name the
// file, line and field.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseConfig(path, data)
}

// ParseConfig parses config data; path is used in messages and to resolve
// relative file names (relative to the config file's directory).
func ParseConfig(path string, data []byte) (*Config, error) {
	c := &Config{path: path}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	// A bad mode setting (unmarshalSetting: "field: line N: ...") leaves the
	// rest decoded, so it is reported with Validate's findings; yaml's own
	// errors ("line N: ...": an unknown or repeated key, a wrong type) may
	// leave whole sections undecoded, so they are reported alone.
	var errs []string
	if err := dec.Decode(c); err != nil && err != io.EOF { // io.EOF: an empty file
		var te *yaml.TypeError
		if !errors.As(err, &te) || slices.ContainsFunc(te.Errors, func(e string) bool { return strings.HasPrefix(e, "line ") }) {
			return nil, fmt.Errorf("%s: %s", path, strings.TrimPrefix(err.Error(), "yaml: "))
		}
		for _, e := range te.Errors {
			errs = append(errs, path+": "+e)
		}
	}
	c.keys = keyPositions(data)
	if err := c.checkPaths(); err != nil {
		errs = append(errs, err.Error())
	}
	c.applyDefaults()
	c.resolvePaths(filepath.Dir(path))
	if err := c.Validate(); err != nil {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		return nil, errors.New(strings.Join(errs, "\n"))
	}
	return c, nil
}

func (c *Config) applyDefaults() {
	if c.Node == "" {
		if h, err := os.Hostname(); err == nil {
			c.Node = sanitizeNodeName(h)
		}
	}
	if c.Socket == "" {
		c.Socket = DefaultSocket
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.FlowLog == "" {
		c.FlowLog = DefaultFlowLog
	}
	if c.FlowLogMaxSize == 0 {
		c.FlowLogMaxSize = DefaultFlowLogMaxSize
	}
	if c.FlowLogFiles == nil {
		n := DefaultFlowLogFiles
		c.FlowLogFiles = &n
	}
	if c.FlowLogAggregate == nil {
		d := DefaultFlowLogAggregate
		c.FlowLogAggregate = &d
	}
	if c.Bridge.Name == "" {
		c.Bridge.Name = DefaultBridge
	}
	if !c.Bridge.Subnet.IsValid() {
		c.Bridge.Subnet = Prefix{DefaultSubnet}
	}
	if c.TokenRefresh == 0 {
		c.TokenRefresh = DefaultRefresh
	}
	if c.KernelTCPTimeout == 0 {
		c.KernelTCPTimeout = DefaultKernelTCPTimeout
	}
	c.FlowTable.applyDefaults()
	c.PUPacketBudget.applyDefaults()
}

func sanitizeNodeName(h string) string {
	h = strings.ToLower(h)
	var b strings.Builder
	for _, r := range h {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '-' {
			b.WriteRune(r)
		}
	}
	s := strings.Trim(b.String(), "-")
	if len(s) > 32 {
		s = s[:32]
	}
	if s == "" {
		s = "node"
	}
	return s
}

// pathFields are the config's file names, by key: each is relative to the
// config file's directory unless absolute.
func (c *Config) pathFields() []struct {
	key string
	p   *string
} {
	return []struct {
		key string
		p   *string
	}{
		{"policy", &c.Policy}, {"flowLog", &c.FlowLog}, {"socket", &c.Socket}, {"stateDir", &c.StateDir},
		{"secrets.pskFile", &c.Secrets.PSKFile}, {"secrets.caCert", &c.Secrets.CACert},
		{"secrets.nodeCert", &c.Secrets.NodeCert}, {"secrets.nodeKey", &c.Secrets.NodeKey},
		{"secrets.caKey", &c.Secrets.CAKey}, {"kubernetes.kubeconfig", &c.Kubernetes.Kubeconfig},
		{"observe.web.tokenFile", &c.Observe.Web.TokenFile},
	}
}

// checkPaths refuses, before the defaults apply, a file name key that is
// set but empty (it would silently mean the default) or that holds a NUL.
func (c *Config) checkPaths() error {
	var errs []string
	for _, f := range c.pathFields() {
		pos, set := c.keys[f.key]
		switch {
		case set && strings.TrimSpace(*f.p) == "":
			errs = append(errs, fmt.Sprintf("%s: %s: empty: want a file name, or leave the key out for the default", at(c.path, pos.line, pos.col), f.key))
		case strings.ContainsRune(*f.p, 0):
			errs = append(errs, fmt.Sprintf("%s: %s: %q holds a NUL byte", at(c.path, pos.line, pos.col), f.key, *f.p))
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "\n"))
	}
	return nil
}

// resolvePaths makes every relative file name relative to dir, the config
// file's directory (not the daemon's working directory).
func (c *Config) resolvePaths(dir string) {
	if !filepath.IsAbs(dir) {
		if abs, err := filepath.Abs(dir); err == nil {
			dir = abs
		}
	}
	for _, f := range c.pathFields() {
		if *f.p != "" && !filepath.IsAbs(*f.p) {
			*f.p = filepath.Join(dir, *f.p)
		}
	}
}

// keyPositions maps the dotted name of every key in the YAML document to
// its value's position (unparseable data: none; the decoder reports it).
func keyPositions(data []byte) map[string]keyPos {
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil || doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil
	}
	keys := map[string]keyPos{}
	var walk func(prefix string, n *yaml.Node)
	walk = func(prefix string, n *yaml.Node) {
		if n.Kind != yaml.MappingNode {
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i].Value, n.Content[i+1]
			if prefix != "" {
				k = prefix + "." + k
			}
			keys[k] = keyPos{v.Line, v.Column}
			walk(k, v)
		}
	}
	walk("", doc.Content[0])
	return keys
}

// maxSocketPath is the longest unix socket path bind(2) takes (sun_path
// holds 108 bytes with its NUL).
const maxSocketPath = 107

// Validate checks every field and reports every problem found.
func (c *Config) Validate() error {
	var errs []string
	bad := func(field, format string, args ...any) {
		pos := c.keys[field]
		errs = append(errs, fmt.Sprintf("%s: %s: %s", at(c.path, pos.line, pos.col), field, fmt.Sprintf(format, args...)))
	}
	if !nodeName.MatchString(c.Node) {
		bad("node", "%q is not a valid node name (lowercase letters, digits and '-', at most 32)", c.Node)
	}
	s := c.Secrets
	switch {
	case s.PSKFile != "" && (s.CACert != "" || s.NodeCert != "" || s.NodeKey != "" || s.CAKey != ""):
		bad("secrets", "set either pskFile or caCert/nodeCert/nodeKey, not both")
	case s.PSKFile == "" && s.CACert == "" && s.NodeCert == "" && s.NodeKey == "" && s.CAKey == "":
		bad("secrets", "missing: set pskFile (PSK mode) or caCert, nodeCert and nodeKey (PKI mode)")
	case s.CAKey != "" && (s.NodeCert != "" || s.NodeKey != ""):
		bad("secrets", "set either caKey (the node issues its certificate) or nodeCert and nodeKey, not both")
	case s.CAKey != "" && s.CACert == "":
		bad("secrets.caCert", "missing (caKey needs the CA's certificate)")
	case s.PSKFile == "" && s.CAKey == "":
		for field, v := range map[string]string{"secrets.caCert": s.CACert, "secrets.nodeCert": s.NodeCert, "secrets.nodeKey": s.NodeKey} {
			if v == "" {
				bad(field, "missing (PKI mode needs caCert, nodeCert and nodeKey)")
			}
		}
	}
	for field, v := range map[string]string{"secrets.caKey": s.CAKey, "secrets.pskFile": s.PSKFile, "secrets.caCert": s.CACert, "secrets.nodeCert": s.NodeCert, "secrets.nodeKey": s.NodeKey, "policy": c.Policy, "kubernetes.kubeconfig": c.Kubernetes.Kubeconfig} {
		if v == "" {
			continue
		}
		if st, err := os.Stat(v); err != nil {
			bad(field, "%v", err)
		} else if st.IsDir() {
			bad(field, "%s is a directory", v)
		}
	}
	switch k := c.Kubernetes; {
	case k.Enabled && c.Policy != "":
		bad("policy", "set either policy (a policy file) or kubernetes.enabled (the cluster's NetworkPolicies), not both")
	case !k.Enabled && c.Policy == "":
		bad("policy", "missing: the policy file to enforce (or enable the kubernetes source)")
	case !k.Enabled && (k.Kubeconfig != "" || k.NodeName != "" || len(k.PodNetworks) > 0 || k.NetnsDir != ""):
		bad("kubernetes", "settings given but kubernetes.enabled is false")
	case k.NetnsDir != "" && !filepath.IsAbs(k.NetnsDir):
		bad("kubernetes.netnsDir", "%q must be absolute", k.NetnsDir)
	}
	if !ifName.MatchString(c.Bridge.Name) {
		bad("bridge.name", "%q is not a valid interface name (at most 12 of [A-Za-z0-9_.-])", c.Bridge.Name)
	}
	if !c.Bridge.Subnet.Addr().Is4() || c.Bridge.Subnet.Bits() > 30 {
		bad("bridge.subnet", "%v: want an IPv4 prefix of /30 or larger", c.Bridge.Subnet)
	}
	if c.Docker.Host != "" && !strings.HasPrefix(c.Docker.Host, "unix://") && !strings.HasPrefix(c.Docker.Host, "tcp://") {
		bad("docker.host", "%q: want unix:///path or tcp://host:port", c.Docker.Host)
	}
	if c.FlowLogMaxSize < 64<<10 {
		bad("flowLogMaxSize", "%d bytes: want at least 64KiB", c.FlowLogMaxSize)
	}
	if n := *c.FlowLogFiles; n < 0 || n > 1000 {
		bad("flowLogFiles", "%d: want 0 to 1000", n)
	}
	if a := *c.FlowLogAggregate; a != 0 && (a < time.Second || a > time.Hour) {
		bad("flowLogAggregate", "%v: want 0 (off) or between 1s and 1h", a)
	}
	if c.TokenRefresh < 10*time.Second || c.TokenRefresh > 24*time.Hour {
		bad("tokenRefresh", "%v: want between 10s and 24h", c.TokenRefresh)
	}
	if c.MaxProcs < 0 || c.MaxProcs > 1024 {
		bad("maxProcs", "%d: want 0 (Go's default) to 1024", c.MaxProcs)
	}
	if c.KernelTCPTimeout < time.Second || c.KernelTCPTimeout > flow.DefaultEstablished {
		bad("kernelTCPTimeout", "%v: want between 1s and %v (the flow table's idle lifetime of an established flow)", c.KernelTCPTimeout, flow.DefaultEstablished)
	}
	c.FlowTable.validate(c.path, func(msg string) { errs = append(errs, msg) })
	c.PUPacketBudget.validate(c.path, func(msg string) { errs = append(errs, msg) })
	c.Observe.validate(bad)
	for field, p := range map[string]string{"socket": c.Socket, "stateDir": c.StateDir, "flowLog": c.FlowLog} {
		if !filepath.IsAbs(p) { // a Config not read by ParseConfig
			bad(field, "%q must be absolute", p)
		}
	}
	if len(c.Socket) > maxSocketPath {
		bad("socket", "%s: %d bytes, longer than a unix socket path may be (%d)", c.Socket, len(c.Socket), maxSocketPath)
	}
	if st, err := os.Stat(c.StateDir); err == nil && !st.IsDir() {
		bad("stateDir", "%s is not a directory", c.StateDir)
	}
	for field, p := range map[string]string{"socket": c.Socket, "flowLog": c.FlowLog} {
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			bad(field, "%s is a directory", p)
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "\n"))
	}
	return nil
}

// flowLog is the flow log's configuration, defaults filled in.
func (c *Config) flowLog() flowLogConfig {
	fl := flowLogConfig{Path: c.FlowLog, MaxSize: int64(c.FlowLogMaxSize), Files: DefaultFlowLogFiles, Aggregate: DefaultFlowLogAggregate}
	if fl.MaxSize == 0 {
		fl.MaxSize = int64(DefaultFlowLogMaxSize)
	}
	if c.FlowLogFiles != nil {
		fl.Files = *c.FlowLogFiles
	}
	if c.FlowLogAggregate != nil {
		fl.Aggregate = *c.FlowLogAggregate
	}
	return fl
}

// Marshal returns the config as YAML that ParseConfig reads back to the
// same settings: the setups that write configs (tests, the demo, perf) fill
// a Config and marshal it instead of printing YAML by hand. Unset fields
// are left out (the parser's defaults apply), so a Config that was never
// defaulted marshals to the few keys it sets.
func (c *Config) Marshal() ([]byte, error) {
	var n yaml.Node
	if err := n.Encode(c); err != nil {
		return nil, fmt.Errorf("node: marshal config: %w", err)
	}
	pruneUnset(&n)
	return yaml.Marshal(&n)
}

// pruneUnset removes the keys of mappings whose value is null, "" or an
// empty mapping or list: the parser treats them as absent.
func pruneUnset(n *yaml.Node) {
	if n.Kind == yaml.DocumentNode {
		for _, c := range n.Content {
			pruneUnset(c)
		}
		return
	}
	if n.Kind != yaml.MappingNode {
		return
	}
	kept := n.Content[:0]
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		pruneUnset(v)
		unset := (v.Kind == yaml.ScalarNode && (v.Tag == "!!null" || (v.Tag == "!!str" && v.Value == ""))) ||
			((v.Kind == yaml.MappingNode || v.Kind == yaml.SequenceNode) && len(v.Content) == 0)
		if !unset {
			kept = append(kept, k, v)
		}
	}
	n.Content = kept
}

// MarshalYAML writes the prefix in CIDR notation (nothing when unset).
func (p Prefix) MarshalYAML() (any, error) {
	if !p.IsValid() {
		return nil, nil
	}
	return p.String(), nil
}

// MarshalYAML writes the size in bytes (nothing when 0: the default).
func (b ByteSize) MarshalYAML() (any, error) {
	if b == 0 {
		return nil, nil
	}
	return int64(b), nil
}

// MarshalYAML writes the count (nothing when it was never set).
func (c Count) MarshalYAML() (any, error) {
	if !c.set && c.N == 0 {
		return nil, nil
	}
	return c.N, nil
}

// MarshalYAML writes "25%" or a number of flows (nothing when never set).
func (s Share) MarshalYAML() (any, error) {
	switch {
	case s.Percent > 0:
		return strconv.Itoa(s.Percent) + "%", nil
	case s.N > 0 || s.set:
		return s.N, nil
	}
	return nil, nil
}

// Procs is the GOMAXPROCS the daemon runs with, given Go's default (the
// CPUs available to the process, or its cgroup's CPU limit) and the
// GOMAXPROCS environment variable (env: its value, "" when unset).
// maxProcs set: that. Otherwise the environment variable, when set, as Go
// applied it (goDefault); otherwise one processor where Go's default is at
// most 2, Go's default above. Why one on small nodes: a new connection is
// a chain of frames, each handled by a goroutine woken for it; with a
// second processor the runtime wakes a second thread for each hand-off,
// and on two CPUs shared with the workloads that costs more than the
// parallelism gains: measured, the daemon's CPU per connection falls by a
// quarter and the added connection latency with it (docs/perf.md,
// "Processors"). Larger nodes were not measured: Go's default stays.
func (c *Config) Procs(goDefault int, env string) int {
	switch {
	case c.MaxProcs > 0:
		return c.MaxProcs
	case env != "" || goDefault > 2:
		return goDefault
	default:
		return 1
	}
}
