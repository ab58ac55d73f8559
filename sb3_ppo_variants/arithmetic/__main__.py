from sb3_ppo_variants.arithmetic.report import main

main()
