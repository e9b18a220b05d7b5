package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The deploy/ files cannot be run here (no systemd as PID 1, no Docker, no
// cluster); these tests check that the configs they carry load, and that
// the files agree with each other.

var tokenFileRE = regexp.MustCompile(`(?m)^token_file = "([^"]*)"`)

// loadDeployConfig loads a config taken from a deploy file, its token_file
// (a path on the target host) pointed at a test token.
func loadDeployConfig(t *testing.T, name, text string) (*Settings, string) {
	t.Helper()
	dir := t.TempDir()
	tok := filepath.Join(dir, "admin.token")
	os.WriteFile(tok, []byte("0123456789abcdef0123456789abcdef\n"), 0o600)
	var tokenPath string
	if m := tokenFileRE.FindStringSubmatch(text); m != nil {
		tokenPath = m[1]
		text = tokenFileRE.ReplaceAllString(text, `token_file = "`+tok+`"`)
	}
	p := filepath.Join(dir, "ftpguard.toml")
	os.WriteFile(p, []byte(text), 0o600)
	st, err := LoadConfig(p)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return st, tokenPath
}

func readDeploy(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("../../deploy", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDeploySystemd(t *testing.T) {
	unit := readDeploy(t, "systemd/ftpguard.service")
	st, tokenPath := loadDeployConfig(t, "systemd/ftpguard.toml", readDeploy(t, "systemd/ftpguard.toml"))
	for _, want := range []string{
		"ExecStart=/usr/local/bin/ftpguard run -config /etc/ftpguard/ftpguard.toml",
		"ExecReload=/bin/kill -HUP $MAINPID",
		"DynamicUser=yes", "StateDirectory=ftpguard", "ProtectSystem=strict", "NoNewPrivileges=yes",
		"AmbientCapabilities=CAP_NET_BIND_SERVICE", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
		"LoadCredential=admin.token:/etc/ftpguard/admin.token",
	} {
		if !strings.Contains(unit, want+"\n") {
			t.Errorf("ftpguard.service lacks %q", want)
		}
	}
	if st.File.Store.Path != "/var/lib/ftpguard/ftpguard.db" || st.Proxy.Listen != "0.0.0.0:21" || st.Proxy.Backend != "127.0.0.1:2121" {
		t.Errorf("systemd config: store %q, listen %q, backend %q", st.File.Store.Path, st.Proxy.Listen, st.Proxy.Backend)
	}
	if tokenPath != "/run/credentials/ftpguard.service/admin.token" {
		t.Errorf("token_file %q is not where LoadCredential=admin.token puts it", tokenPath)
	}
	// The drain fits in the stop timeout.
	if !strings.Contains(unit, "TimeoutStopSec=45s") || st.File.Sessions.DrainTimeout.Seconds() >= 45 {
		t.Errorf("drain_timeout %v vs TimeoutStopSec", st.File.Sessions.DrainTimeout)
	}
	vs := readDeploy(t, "systemd/vsftpd.conf")
	for _, want := range []string{"listen_address=127.0.0.1", "listen_port=2121", "max_per_ip=0"} {
		if !strings.Contains(vs, want+"\n") {
			t.Errorf("vsftpd.conf lacks %q", want)
		}
	}
}

func TestDeployDocker(t *testing.T) {
	df := readDeploy(t, "docker/Dockerfile")
	st, _ := loadDeployConfig(t, "docker/ftpguard.toml", readDeploy(t, "docker/ftpguard.toml"))
	gomod, _ := os.ReadFile("../../go.mod")
	goVersion := regexp.MustCompile(`(?m)^go (\S+)`).FindSubmatch(gomod)[1]
	for _, want := range []string{
		"ARG GO_VERSION=" + string(goVersion),
		"CGO_ENABLED=0",
		"FROM gcr.io/distroless/static-debian12:nonroot",
		"USER 65532:65532",
		"/out/ftpguard check -config deploy/docker/ftpguard.toml",
		"EXPOSE 2100 50000-50009 9121",
	} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	if st.Proxy.Listen != "0.0.0.0:2100" || st.Proxy.PassivePorts.Min != 50000 || st.Proxy.PassivePorts.Max != 50009 ||
		st.File.Store.Path != "/var/lib/ftpguard/ftpguard.db" {
		t.Errorf("docker config: %+v", st.File)
	}
}

func TestDeployKubernetes(t *testing.T) {
	y := readDeploy(t, "kubernetes/ftpguard-sidecar.yaml")
	// The ConfigMap's ftpguard.toml: the block indented under "ftpguard.toml: |".
	_, block, ok := strings.Cut(y, "  ftpguard.toml: |\n")
	if !ok {
		t.Fatal("no ftpguard.toml in the ConfigMap")
	}
	var lines []string
	for _, l := range strings.Split(block, "\n") {
		if l != "" && !strings.HasPrefix(l, "    ") {
			break
		}
		lines = append(lines, strings.TrimPrefix(l, "    "))
	}
	st, tokenPath := loadDeployConfig(t, "ConfigMap ftpguard.toml", strings.Join(lines, "\n"))
	if st.Admin.Address != "0.0.0.0:9121" || st.Admin.Token == "" {
		t.Errorf("admin: %+v (the pod IP needs a token)", st.Admin)
	}
	if !strings.HasPrefix(tokenPath, "/etc/ftpguard/token/") || !strings.Contains(y, "mountPath: /etc/ftpguard/token") {
		t.Errorf("token_file %q is not in the Secret's mount", tokenPath)
	}
	if !strings.Contains(y, `args: ["run", "-config", "/etc/ftpguard/conf/ftpguard.toml"]`) ||
		!strings.Contains(y, "mountPath: /etc/ftpguard/conf,") {
		t.Error("the container does not run the ConfigMap's config")
	}
	for p := st.Proxy.PassivePorts.Min; p <= st.Proxy.PassivePorts.Max; p++ {
		if !strings.Contains(y, "containerPort: "+strconv.Itoa(int(p))+"}") || !strings.Contains(y, "port: "+strconv.Itoa(int(p))+", targetPort") {
			t.Errorf("passive port %d is not in the pod and the Service", p)
		}
	}
	if st.Proxy.PassiveAddr.String() != "203.0.113.10" || !strings.Contains(y, "loadBalancerIP: 203.0.113.10") {
		t.Error("[passive] address is not the Service's IP")
	}
	for _, want := range []string{"externalTrafficPolicy: Local", "readOnlyRootFilesystem: true", "runAsNonRoot: true",
		"path: /healthz", "containerPort: 2100}", "listen_address=127.0.0.1", "listen_port=2121"} {
		if !strings.Contains(y, want) {
			t.Errorf("sidecar example lacks %q", want)
		}
	}
}
