//! `urbdadm`: administer urbd replicated resources (like drbdadm). See `urbd::adm`.

fn main() -> std::process::ExitCode {
    urbd::adm::main()
}
