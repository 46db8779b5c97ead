package main

import (
	"bufio"
	"errors"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/keybroker/keybroker/internal/akvemu"
	"github.com/keybroker/keybroker/internal/cli"
	"github.com/keybroker/keybroker/internal/config"
)

// The deployment files under deploy/, checked against this binary: every
// command, flag, configuration key, path, port and environment variable
// they name must be one it has.

const deployDir = "../../deploy"

var flagLine = regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`)

// commandFlags returns the flags `keybroker CMD -h` lists, or fails when
// CMD is not a command.
func commandFlags(t *testing.T, cmd string) map[string]bool {
	t.Helper()
	if !slices.ContainsFunc(program().Commands, func(c cli.Command[*env]) bool { return c.Name == cmd }) {
		t.Fatalf("deploy file runs 'keybroker %s': no such command", cmd)
	}
	_, errOut, code := runCLI(t, cmd, "-h")
	if code != exitOK {
		t.Fatalf("keybroker %s -h exit %d: %s", cmd, code, errOut)
	}
	flags := map[string]bool{}
	for _, m := range flagLine.FindAllStringSubmatch(errOut, -1) {
		flags[m[1]] = true
	}
	return flags
}

// checkArgs checks a keybroker command line (without the program name) and
// returns its --config value.
func checkArgs(t *testing.T, where string, args []string) string {
	t.Helper()
	if len(args) == 0 {
		t.Fatalf("%s: no keybroker command", where)
	}
	flags := commandFlags(t, args[0])
	cfg := ""
	for i := 1; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			continue // a flag's value
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !flags[name] {
			t.Errorf("%s: keybroker %s has no flag %s (it has %v)", where, args[0], a, flags)
		}
		if name == "config" {
			if !hasVal && i+1 < len(args) {
				val = args[i+1]
			}
			cfg = val
		}
	}
	return cfg
}

// parseDeployConfig parses a configuration from a deploy file with
// config.Parse, giving it env for the environment, and returns it with the
// names of the environment variables the binary asked for.
func parseDeployConfig(t *testing.T, name string, data []byte, env map[string]string) (*config.Config, map[string]bool) {
	t.Helper()
	asked := map[string]bool{}
	getenv := func(k string) string { asked[k] = true; return env[k] }
	cfg, err := config.Parse(name, data, getenv)
	if err != nil {
		t.Fatalf("%s: config.Parse err = %v, want nil", name, err)
	}
	return cfg, asked
}

// under reports whether path is dir or inside it.
func under(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// unitFile is a systemd unit: section -> key -> values, in order.
type unitFile map[string]map[string][]string

func parseUnit(t *testing.T, path string) unitFile {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: %q is not KEY=VALUE in a section", path, n, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

func (u unitFile) one(t *testing.T, section, key string) string {
	t.Helper()
	vs := u[section][key]
	if len(vs) == 0 {
		t.Errorf("[%s] %s= missing", section, key)
		return ""
	}
	return vs[len(vs)-1]
}

// systemdAnalyze finds systemd-analyze: a test failure on CI (make deps
// installs the systemd package), a skip elsewhere.
func systemdAnalyze(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("systemd-analyze not found (%v): the Makefile's APT_PACKAGES lists systemd, and make deps installs it", err)
		}
		t.Skipf("systemd-analyze not found (%v): install Debian's systemd package (make deps)", err)
	}
	return p
}

func TestDeploySystemdUnit(t *testing.T) {
	unitPath := filepath.Join(deployDir, "systemd", "keybroker.service")
	u := parseUnit(t, unitPath)

	hardening := map[string]string{
		"Type": "notify", "LimitCORE": "0", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
		"PrivateTmp": "yes", "ProtectHome": "yes", "MemoryDenyWriteExecute": "yes", "LockPersonality": "yes",
		"RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "CapabilityBoundingSet": "CAP_IPC_LOCK",
		"AmbientCapabilities": "CAP_IPC_LOCK", "NotifyAccess": "main",
	}
	for k, want := range hardening {
		if got := u.one(t, "Service", k); got != want {
			t.Errorf("[Service] %s=%s, want %s", k, got, want)
		}
	}
	if got := u.one(t, "Service", "LimitMEMLOCK"); got == "" || got == "0" {
		t.Errorf("[Service] LimitMEMLOCK=%q: want a limit that lets the broker lock its keys", got)
	}
	if got := u.one(t, "Service", "RestartPreventExitStatus"); got != "2" || exitUsage != 2 {
		t.Errorf("RestartPreventExitStatus=%s, want the configuration-error exit code %d", got, exitUsage)
	}
	if got := u.one(t, "Unit", "Before"); got != "mongod.service" {
		t.Errorf("[Unit] Before=%s, want mongod.service", got)
	}

	// The command line, and the example configuration it names.
	exe := strings.Fields(u.one(t, "Service", "ExecStart"))
	if len(exe) < 2 || exe[0] != "/usr/bin/keybroker" {
		t.Fatalf("ExecStart=%v, want /usr/bin/keybroker serve ...", exe)
	}
	cfgPath := checkArgs(t, "ExecStart", exe[1:])
	if exe[1] != "serve" || cfgPath != "/etc/keybroker/keybroker.yaml" {
		t.Errorf("ExecStart runs %q with --config %q, want serve with /etc/keybroker/keybroker.yaml", exe[1], cfgPath)
	}
	data, err := os.ReadFile(filepath.Join(deployDir, "systemd", "keybroker.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := parseDeployConfig(t, "deploy/systemd/keybroker.yaml", data, nil)
	rw := strings.Fields(u.one(t, "Service", "ReadWritePaths"))
	if len(rw) != 1 || !under(cfg.Keystore.Dir, rw[0]) {
		t.Errorf("ReadWritePaths=%v: want exactly the keystore's volume, holding keystore.dir %s", rw, cfg.Keystore.Dir)
	}
	if m := u.one(t, "Unit", "RequiresMountsFor"); m != cfg.Keystore.RequireMount || m == "" {
		t.Errorf("RequiresMountsFor=%s, want keystore.require_mount %q", m, cfg.Keystore.RequireMount)
	}
	if run := "/run/" + u.one(t, "Service", "RuntimeDirectory"); cfg.Listen.Unix != "" && filepath.Dir(cfg.Listen.Unix) != run {
		t.Errorf("listen.unix %s is not in the unit's RuntimeDirectory %s, the only other writable place", cfg.Listen.Unix, run)
	}

	// systemd's own check, on a copy whose ExecStart is an executable that
	// exists here (verify checks it); mongod gets a stand-in unit for the
	// drop-in to extend.
	analyze := systemdAnalyze(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	unit, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("keybroker.service", []byte(strings.Replace(string(unit), "ExecStart=/usr/bin/keybroker ", "ExecStart="+self+" ", 1)))
	write("mongod.service", []byte("[Unit]\nDescription=mongod stand-in\n[Service]\nExecStart="+self+"\n"))
	dropIn, err := os.ReadFile(filepath.Join(deployDir, "systemd", "mongod-keybroker.conf"))
	if err != nil {
		t.Fatal(err)
	}
	write("mongod.service.d/keybroker.conf", dropIn)
	cmd := exec.Command(analyze, "verify", filepath.Join(dir, "keybroker.service"), filepath.Join(dir, "mongod.service"))
	cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+dir+":", "SYSTEMD_LOG_LEVEL=notice")
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) != 0 {
		t.Errorf("systemd-analyze verify: err = %v, output:\n%s", err, out)
	}
}

// k8sObject is the part of a Kubernetes object the test reads.
type k8sObject struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name        string            `yaml:"name"`
		Annotations map[string]string `yaml:"annotations"`
	} `yaml:"metadata"`
	Data map[string]string `yaml:"data"`
	Spec struct {
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec podSpec `yaml:"spec"`
		} `yaml:"template"`
		VolumeClaimTemplates []struct {
			Metadata struct {
				Name string `yaml:"name"`
			} `yaml:"metadata"`
		} `yaml:"volumeClaimTemplates"`
	} `yaml:"spec"`
}

type podSpec struct {
	ServiceAccountName string `yaml:"serviceAccountName"`
	SecurityContext    struct {
		RunAsNonRoot *bool `yaml:"runAsNonRoot"`
	} `yaml:"securityContext"`
	InitContainers []container `yaml:"initContainers"`
	Containers     []container `yaml:"containers"`
	Volumes        []struct {
		Name      string `yaml:"name"`
		ConfigMap *struct {
			Name string `yaml:"name"`
		} `yaml:"configMap"`
		Secret *struct {
			SecretName string `yaml:"secretName"`
		} `yaml:"secret"`
		EmptyDir *struct{} `yaml:"emptyDir"`
	} `yaml:"volumes"`
}

type container struct {
	Name          string   `yaml:"name"`
	Image         string   `yaml:"image"`
	Args          []string `yaml:"args"`
	RestartPolicy string   `yaml:"restartPolicy"`
	Env           []struct {
		Name string `yaml:"name"`
	} `yaml:"env"`
	SecurityContext struct {
		ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		SubPath   string `yaml:"subPath"`
	} `yaml:"volumeMounts"`
	StartupProbe   *probe `yaml:"startupProbe"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port int    `yaml:"port"`
	} `yaml:"httpGet"`
}

func TestDeployKubernetes(t *testing.T) {
	path := filepath.Join(deployDir, "kubernetes", "keybroker.yaml")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(raw)))
	dec.KnownFields(false)
	objs := map[string]k8sObject{}
	for {
		var o k8sObject
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s is not well-formed YAML: %v", path, err)
		}
		objs[o.Kind] = o
	}
	wantKinds := map[string]string{"ServiceAccount": "v1", "ConfigMap": "v1", "StatefulSet": "apps/v1"}
	for kind, api := range wantKinds {
		if o, ok := objs[kind]; !ok || o.APIVersion != api {
			t.Errorf("%s: %s has apiVersion %q, want %q", path, kind, o.APIVersion, api)
		}
	}
	if len(objs) != len(wantKinds) {
		t.Errorf("%s holds kinds %v, want %v", path, slices.Collect(maps.Keys(objs)), wantKinds)
	}
	sa, cm, sts := objs["ServiceAccount"], objs["ConfigMap"], objs["StatefulSet"]
	pod := sts.Spec.Template.Spec

	// Workload identity.
	if sa.Metadata.Annotations["azure.workload.identity/client-id"] == "" || pod.ServiceAccountName != sa.Metadata.Name {
		t.Errorf("the pod's service account %q must be %q, annotated with azure.workload.identity/client-id", pod.ServiceAccountName, sa.Metadata.Name)
	}
	if sts.Spec.Template.Metadata.Labels["azure.workload.identity/use"] != "true" {
		t.Error(`the pod template lacks the label azure.workload.identity/use: "true"`)
	}

	// The configuration, with what the workload identity webhook injects.
	injected := map[string]string{
		"AZURE_CLIENT_ID": "00000000-0000-0000-0000-000000000000", "AZURE_TENANT_ID": "00000000-0000-0000-0000-000000000001",
		"AZURE_FEDERATED_TOKEN_FILE": "/var/run/secrets/azure/tokens/azure-identity-token", "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/",
	}
	cfgData, ok := cm.Data["keybroker.yaml"]
	if !ok {
		t.Fatalf("ConfigMap %s has no keybroker.yaml", cm.Metadata.Name)
	}
	cfg, asked := parseDeployConfig(t, "ConfigMap "+cm.Metadata.Name, []byte(cfgData), injected)
	for _, k := range []string{"AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE"} {
		if !asked[k] {
			t.Errorf("the configuration never reads %s, which workload identity relies on", k)
		}
	}
	if cfg.Azure.Credential.Kind != "workload_identity" {
		t.Errorf("azure.credential.kind %q, want workload_identity", cfg.Azure.Credential.Kind)
	}

	// Volumes by name, and what each container mounts where.
	claims := map[string]bool{}
	for _, c := range sts.Spec.VolumeClaimTemplates {
		claims[c.Metadata.Name] = true
	}
	kindOf := map[string]string{}
	for _, v := range pod.Volumes {
		switch {
		case v.ConfigMap != nil:
			kindOf[v.Name] = "configMap:" + v.ConfigMap.Name
		case v.Secret != nil:
			kindOf[v.Name] = "secret"
		case v.EmptyDir != nil:
			kindOf[v.Name] = "emptyDir"
		}
	}
	for name := range claims {
		kindOf[name] = "pvc"
	}
	mountOf := func(c container, path string) (string, string) {
		best, kind := "", ""
		for _, m := range c.VolumeMounts {
			if under(path, m.MountPath) && len(m.MountPath) > len(best) {
				best, kind = m.MountPath, kindOf[m.Name]
				if kind == "" {
					t.Errorf("container %s mounts volume %q, which the pod does not define", c.Name, m.Name)
				}
			}
		}
		return best, kind
	}

	var broker, mongod *container
	brokers := 0
	for i, c := range append(slices.Clone(pod.InitContainers), pod.Containers...) {
		if ro := c.SecurityContext.ReadOnlyRootFilesystem; ro == nil || !*ro {
			t.Errorf("container %s: readOnlyRootFilesystem is not true", c.Name)
		}
		if !strings.Contains(c.Image, "keybroker") {
			if c.Name == "mongod" {
				mongod = &pod.Containers[i-len(pod.InitContainers)]
			}
			continue
		}
		brokers++
		cfgPath := checkArgs(t, "container "+c.Name, c.Args)
		if mp, kind := mountOf(c, cfgPath); kind != "configMap:"+cm.Metadata.Name {
			t.Errorf("container %s: --config %s is on %q (%s), want the ConfigMap %s", c.Name, cfgPath, mp, kind, cm.Metadata.Name)
		}
		for _, f := range []struct{ key, path, kind string }{
			{"keystore.dir", cfg.Keystore.Dir, "pvc"},
			{"listen.unix", cfg.Listen.Unix, "emptyDir"},
			{"tls.cert_file", cfg.TLS.CertFile, "secret"},
			{"tls.key_file", cfg.TLS.KeyFile, "secret"},
			{"tls.client_ca_file", cfg.TLS.ClientCAFile, "secret"},
		} {
			if mp, kind := mountOf(c, f.path); kind != f.kind {
				t.Errorf("container %s: %s %s is on %q (%s), want a %s volume", c.Name, f.key, f.path, mp, kind, f.kind)
			}
		}
		if mp, _ := mountOf(c, cfg.Keystore.Dir); mp != cfg.Keystore.RequireMount {
			t.Errorf("container %s: keystore.require_mount %q, want the keystore volume's mount point %q", c.Name, cfg.Keystore.RequireMount, mp)
		}
		for _, e := range c.Env {
			if !asked[e.Name] && e.Name != "NOTIFY_SOCKET" {
				t.Errorf("container %s sets %s, which keybroker never reads", c.Name, e.Name)
			}
		}
		if c.Args[0] == "serve" {
			broker = &pod.InitContainers[i]
		}
	}
	if broker == nil || mongod == nil || brokers != 2 {
		t.Fatalf("want a keystore-init container, a keybroker serve sidecar and a mongod container; found %d keybroker containers, broker %v, mongod %v", brokers, broker != nil, mongod != nil)
	}
	if broker.RestartPolicy != "Always" {
		t.Errorf("keybroker is not a native sidecar (restartPolicy %q, want Always): mongod could start before it", broker.RestartPolicy)
	}

	// Probes on the admin listener, reachable by the kubelet.
	host, port, err := net.SplitHostPort(cfg.Admin.Address)
	if err != nil || (host != "0.0.0.0" && host != "" && host != "::") {
		t.Errorf("admin.address %q: the kubelet probes the pod IP, so listen on 0.0.0.0", cfg.Admin.Address)
	}
	for _, p := range []struct {
		name, path string
		probe      *probe
	}{{"liveness", "/healthz", broker.LivenessProbe}, {"readiness", "/readyz", broker.ReadinessProbe}, {"startup", "/healthz", broker.StartupProbe}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("keybroker has no %s httpGet probe", p.name)
			continue
		}
		if p.probe.HTTPGet.Path != p.path || strconv.Itoa(p.probe.HTTPGet.Port) != port {
			t.Errorf("%s probe GET :%d%s, want :%s%s (admin.address %s)", p.name, p.probe.HTTPGet.Port, p.probe.HTTPGet.Path, port, p.path, cfg.Admin.Address)
		}
	}

	// mongod: shares the socket's directory, and speaks KMIP to the address
	// the broker's kmip section names.
	if mp, kind := mountOf(*mongod, cfg.Listen.Unix); kind != "emptyDir" || mp != filepath.Dir(cfg.Listen.Unix) {
		t.Errorf("mongod does not share the broker's socket directory %s (mount %q, %s)", filepath.Dir(cfg.Listen.Unix), mp, kind)
	}
	var kmipCfg struct {
		KMIP struct {
			Address string `yaml:"address"`
		} `yaml:"kmip"`
	}
	if err := yaml.Unmarshal([]byte(cfgData), &kmipCfg); err != nil {
		t.Fatal(err)
	}
	khost, kport, err := net.SplitHostPort(kmipCfg.KMIP.Address)
	if err != nil || khost != "127.0.0.1" || kport != "5696" {
		t.Errorf("kmip.address %q, want 127.0.0.1:5696 (loopback, inside the pod)", kmipCfg.KMIP.Address)
	}
	args := strings.Join(mongod.Args, " ")
	for _, w := range []string{"--enableEncryption", "--kmipServerName=" + khost, "--kmipPort=" + kport, "--kmipServerCAFile=" + cfg.TLS.ClientCAFile} {
		if !strings.Contains(args, w) {
			t.Errorf("mongod args %q lack %s", args, w)
		}
	}
}

func TestDeployDockerfile(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(deployDir, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var froms []string
	var user, entry, build string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch strings.ToUpper(f[0]) {
		case "FROM":
			froms = append(froms, strings.Join(f[1:], " "))
		case "USER":
			user = f[1]
		case "ENTRYPOINT":
			entry = strings.Join(f[1:], " ")
		case "RUN":
			if strings.Contains(line, "go build") {
				build = line
			}
		}
	}
	if len(froms) < 2 || !strings.HasSuffix(froms[0], " AS build") || froms[len(froms)-1] != "scratch" {
		t.Errorf("FROM lines %q: want a build stage and a final scratch stage", froms)
	}
	if !strings.Contains(build, "CGO_ENABLED=0") || !strings.Contains(build, "./cmd/keybroker") {
		t.Errorf("build step %q: want a static (CGO_ENABLED=0) build of ./cmd/keybroker", build)
	}
	if uid, _, _ := strings.Cut(user, ":"); uid == "" || uid == "0" || uid == "root" {
		t.Errorf("USER %q: want a non-root numeric user", user)
	}
	if entry != `["/usr/bin/keybroker"]` {
		t.Errorf("ENTRYPOINT %s, want [\"/usr/bin/keybroker\"]", entry)
	}
}

// TestAlertRulesNameRealMetrics reads the example Prometheus alert rules
// and scrapes a real two-region broker after a failover: every keybroker
// metric and label a rule names must be one the broker exports. (promtool
// checks the rules' syntax: make check-rules.)
func TestAlertRulesNameRealMetrics(t *testing.T) {
	path := filepath.Join(deployDir, "prometheus", "keybroker-rules.yaml")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rf struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				For         string            `yaml:"for"`
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	dec := yaml.NewDecoder(strings.NewReader(string(raw)))
	dec.KnownFields(true)
	if err := dec.Decode(&rf); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(rf.Groups) == 0 {
		t.Fatalf("%s has no rule groups", path)
	}

	h := newRegionsHarness(t, regionsOpts{regions: []string{"east", "west"}, timeout: "2s"})
	h.start()
	ctx := ctxT(t, 2*time.Minute)
	if err := h.emu.Control().InjectFault(ctx, akvemu.Fault{Host: eastHost, Status: 503}); err != nil {
		t.Fatal(err)
	}
	failOver(ctx, t, h.admin(), h.engine())
	fams := h.scrape()

	metricRe := regexp.MustCompile(`\b(keybroker_[a-z_]+)(\{[^}]*\})?`)
	labelRe := regexp.MustCompile(`([a-z_]+)\s*[=!]~?`)
	byRe := regexp.MustCompile(`by \(([^)]*)\)`)
	n := 0
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			n++
			if r.Alert == "" || r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("group %s: rule %q lacks alert, expr, labels.severity or annotations.summary", g.Name, r.Alert)
			}
			var byLabels []string
			for _, m := range byRe.FindAllStringSubmatch(r.Expr, -1) {
				for _, l := range strings.Split(m[1], ",") {
					byLabels = append(byLabels, strings.TrimSpace(l))
				}
			}
			for _, m := range metricRe.FindAllStringSubmatch(r.Expr, -1) {
				name := m[1]
				fam := fams[name]
				for _, suffix := range []string{"_count", "_sum", "_bucket"} {
					if fam == nil && strings.HasSuffix(name, suffix) {
						fam = fams[strings.TrimSuffix(name, suffix)]
					}
				}
				if fam == nil {
					t.Errorf("rule %s: %s is not a metric the broker exports", r.Alert, name)
					continue
				}
				has := map[string]bool{"instance": true, "job": true} // added by Prometheus
				for _, s := range fam.GetMetric() {
					for _, l := range s.GetLabel() {
						has[l.GetName()] = true
					}
				}
				var used []string
				for _, lm := range labelRe.FindAllStringSubmatch(m[2], -1) {
					used = append(used, lm[1])
				}
				for _, l := range append(used, byLabels...) {
					if !has[l] {
						t.Errorf("rule %s: %s has no label %q", r.Alert, name, l)
					}
				}
			}
		}
	}
	t.Logf("%d rules checked against %d metric families", n, len(fams))
}

// TestMakeRunQuiet: `make run` must print keybroker dev's JSON line first,
// so neither it nor the build it depends on may echo its command lines.
func TestMakeRunQuiet(t *testing.T) {
	data, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	recipes := map[string][]string{}
	target := ""
	for _, line := range strings.Split(string(data), "\n") {
		switch {
		case strings.HasPrefix(line, "\t") && target != "":
			recipes[target] = append(recipes[target], line[1:])
		case strings.HasPrefix(line, "run:") || strings.HasPrefix(line, "build:"):
			target, _, _ = strings.Cut(line, ":")
		default:
			target = ""
		}
	}
	for _, name := range []string{"run", "build"} {
		if len(recipes[name]) == 0 {
			t.Errorf("Makefile has no recipe for %s", name)
		}
		for _, l := range recipes[name] {
			if !strings.HasPrefix(l, "@") {
				t.Errorf("Makefile %s: %q is echoed before the JSON line: prefix it with @", name, l)
			}
		}
	}
}
