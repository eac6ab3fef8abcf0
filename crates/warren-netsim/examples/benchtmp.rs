use warren_netsim::nat_check::{Subject, check};
fn main() {
    let mut subjects: Vec<Subject> = warren_netsim::nat::NatPreset::ALL.iter().map(|p| Subject::Preset(*p)).collect();
    subjects.extend(warren_netsim::KernelPorts::ALL.iter().map(|p| Subject::Kernel(*p)));
    for s in subjects {
        let t = std::time::Instant::now();
        let o = check(&s, Some(std::time::Duration::from_secs(2)), 1).unwrap();
        println!("{:?} in {:?}", o, t.elapsed());
    }
}
